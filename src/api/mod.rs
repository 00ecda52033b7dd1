//! The control surface. [`command::Command`] is everything a client can ask;
//! `server` only turns HTTP requests on the unix socket into commands and
//! replies into JSON; `client` is what the CLI uses to speak to it.

pub mod client;
pub mod command;
pub mod exec;
pub mod server;

/// Whether a character may reach a terminal as it is: not a control
/// character (C0 but newline and tab, DEL, C1) and not a bidirectional
/// override or isolate (which reorder what the admin sees).
fn safe_char(c: char) -> bool {
    !(c.is_control() && c != '\n' && c != '\t'
        || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'))
}

/// Text for a terminal: every control character (but newline and tab) and
/// bidirectional override written as an escape (`\x1b`, `\u{202e}`), so
/// what a server, a file or a domain name carries can never move the
/// cursor, recolour, retitle or reorder the admin's terminal.
pub fn printable(s: &str) -> std::borrow::Cow<'_, str> {
    if s.chars().all(safe_char) {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if safe_char(c) {
            out.push(c);
        } else if (c as u32) < 0x100 {
            out.push_str(&format!("\\x{:02x}", c as u32));
        } else {
            out.push_str(&format!("\\u{{{:x}}}", c as u32));
        }
    }
    std::borrow::Cow::Owned(out)
}

/// JSON text for a terminal: what serde_json writes raw (DEL, C1, bidi
/// overrides; it escapes C0 itself) as `\uXXXX`, which is still the same JSON.
pub fn printable_json(json: &str) -> std::borrow::Cow<'_, str> {
    if json.chars().all(safe_char) {
        return std::borrow::Cow::Borrowed(json);
    }
    let mut out = String::with_capacity(json.len() + 8);
    for c in json.chars() {
        if safe_char(c) {
            out.push(c);
        } else {
            out.push_str(&format!("\\u{:04x}", c as u32));
        }
    }
    std::borrow::Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminal_escapes_are_shown_not_obeyed() {
        assert_eq!(printable("web-1\tok\n"), "web-1\tok\n");
        assert_eq!(
            printable("a\x1b]0;pwned\x07b\u{9b}2J\u{202e}c\x7f"),
            "a\\x1b]0;pwned\\x07b\\x9b2J\\u{202e}c\\x7f"
        );
        let v = serde_json::json!({"name": "a\x1b[2J\u{9b}\u{202e}"});
        let text = serde_json::to_string(&v).unwrap();
        let shown = printable_json(&text);
        assert_eq!(shown, r#"{"name":"a\u001b[2J\u009b\u202e"}"#);
        let back: serde_json::Value = serde_json::from_str(&shown).unwrap();
        assert_eq!(back, v, "the same JSON");
    }
}
