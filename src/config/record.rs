//! Session recording settings (`record`, `record_input` on a machine or a
//! command rule, a rule's over its machine's) and their grammar.

/// Whether a session is recorded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Record {
    #[default]
    Off,
    /// Recorded when the recorder takes it; run either way.
    On,
    /// Runs only while the recorder takes the recording (fails closed).
    Required,
}

impl Record {
    pub fn parse(text: &str) -> Result<Record, String> {
        match text {
            "off" => Ok(Record::Off),
            "on" => Ok(Record::On),
            "required" => Ok(Record::Required),
            other => Err(format!("record = {other:?} is not off, on or required")),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Record::Off => "off",
            Record::On => "on",
            Record::Required => "required",
        }
    }
}

/// `record` and `record_input` as written on a machine or a rule.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RecordPolicy {
    pub record: Option<Record>,
    /// Also the keystrokes (off by default: they carry passwords).
    pub record_input: Option<bool>,
}

impl RecordPolicy {
    /// These settings, each falling back to `base`'s.
    pub fn over(&self, base: &RecordPolicy) -> RecordPolicy {
        RecordPolicy {
            record: self.record.or(base.record),
            record_input: self.record_input.or(base.record_input),
        }
    }

    pub fn record(&self) -> Record {
        self.record.unwrap_or_default()
    }

    pub fn input(&self) -> bool {
        self.record_input.unwrap_or(false)
    }

    pub fn is_empty(&self) -> bool {
        self.record.is_none() && self.record_input.is_none()
    }
}
