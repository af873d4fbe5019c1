//! The daemon's few HTML pages (the HTTP listener's index and messages,
//! the status page): one page frame and one escape.

/// A whole page: `title` as title and heading, `head` added inside
/// `<head>` (a style), `body` as it is (already escaped).
pub fn page(title: &str, head: &str, body: &str) -> String {
    format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>{t}</title>{head}</head>\n<body>\n<h1>{t}</h1>\n{body}</body></html>\n",
        t = escape(title)
    )
}

/// `text` safe inside an element or a double-quoted attribute.
pub fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
