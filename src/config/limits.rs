//! `memory_max`, `tasks_max` and `cpu_quota` on a machine or a command rule:
//! the limits of each command's own control group, in systemd's value
//! syntax (systemd.resource-control(5)), checked here and applied by the
//! privileged helper through the command's transient unit.

/// One limit: the text as written (sent on to machines as it is) and its
/// value in the unit systemd's D-Bus property takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limit {
    pub text: String,
    /// `MemoryMax` bytes, `TasksMax` count, `CPUQuotaPerSecUSec`
    /// microseconds; `u64::MAX` is "infinity".
    pub value: u64,
}

/// The limits of one command; a rule's own override its machine's.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Limits {
    pub memory_max: Option<Limit>,
    pub tasks_max: Option<Limit>,
    pub cpu_quota: Option<Limit>,
}

impl Limits {
    /// These limits, each falling back to `base`'s.
    pub fn over(&self, base: &Limits) -> Limits {
        Limits {
            memory_max: self.memory_max.clone().or_else(|| base.memory_max.clone()),
            tasks_max: self.tasks_max.clone().or_else(|| base.tasks_max.clone()),
            cpu_quota: self.cpu_quota.clone().or_else(|| base.cpu_quota.clone()),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.memory_max.is_none() && self.tasks_max.is_none() && self.cpu_quota.is_none()
    }
}

/// The text of a TOML value: a string as it is, an integer in decimal.
pub fn text_of(value: &toml::Value) -> Option<String> {
    match value {
        toml::Value::String(s) => Some(s.trim().to_owned()),
        toml::Value::Integer(i) => Some(i.to_string()),
        _ => None,
    }
}

/// `memory_max`: bytes with an optional K, M, G or T suffix (base 1024), or
/// `infinity`.
pub fn memory_max(text: &str) -> Result<u64, String> {
    if text == "infinity" {
        return Ok(u64::MAX);
    }
    let (digits, unit) = match text.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => (&text[..i], Some(c.to_ascii_uppercase())),
        _ => (text, None),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("memory_max {text:?} is not a size"))?;
    let shift = match unit {
        None => 0,
        Some('K') => 10,
        Some('M') => 20,
        Some('G') => 30,
        Some('T') => 40,
        Some(c) => return Err(format!("unknown unit {c:?} in memory_max {text:?}")),
    };
    n.checked_mul(1 << shift)
        .filter(|&b| b > 0)
        .ok_or_else(|| format!("memory_max {text:?} is out of range"))
}

/// `tasks_max`: a number of processes and threads above 0, or `infinity`.
pub fn tasks_max(text: &str) -> Result<u64, String> {
    if text == "infinity" {
        return Ok(u64::MAX);
    }
    match text.parse::<u64>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!("tasks_max {text:?} is not a number above 0")),
    }
}

/// `cpu_quota`: a percentage of one CPU above 0 (`"150%"` is one and a half
/// CPUs), as CPU time per second in microseconds.
pub fn cpu_quota(text: &str) -> Result<u64, String> {
    let Some(percent) = text.strip_suffix('%') else {
        return Err(format!("cpu_quota {text:?} needs a % sign"));
    };
    match percent.parse::<u64>() {
        Ok(p) if p > 0 && p <= 100_000 => Ok(p * 10_000),
        _ => Err(format!("cpu_quota {text:?} is not a percentage above 0")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_counts_and_quotas_parse_as_systemd_reads_them() {
        assert_eq!(memory_max("512M"), Ok(512 << 20));
        assert_eq!(memory_max("1g"), Ok(1 << 30));
        assert_eq!(memory_max("4096"), Ok(4096));
        assert_eq!(memory_max("infinity"), Ok(u64::MAX));
        assert!(memory_max("12X").is_err());
        assert!(memory_max("0").is_err());
        assert!(memory_max("50%").is_err());
        assert_eq!(tasks_max("64"), Ok(64));
        assert!(tasks_max("0").is_err());
        assert!(tasks_max("-1").is_err());
        assert_eq!(cpu_quota("50%"), Ok(500_000));
        assert_eq!(cpu_quota("200%"), Ok(2_000_000));
        assert!(cpu_quota("50").is_err());
        assert!(cpu_quota("0%").is_err());
    }

    #[test]
    fn a_rules_limits_override_its_machines() {
        let limit = |text: &str, value| {
            Some(Limit {
                text: text.into(),
                value,
            })
        };
        let machine = Limits {
            memory_max: limit("1G", 1 << 30),
            tasks_max: limit("64", 64),
            cpu_quota: None,
        };
        let rule = Limits {
            tasks_max: limit("8", 8),
            ..Limits::default()
        };
        let both = rule.over(&machine);
        assert_eq!(both.tasks_max, limit("8", 8));
        assert_eq!(both.memory_max, limit("1G", 1 << 30));
        assert_eq!(both.cpu_quota, None);
    }
}
