//! Text from queue senders, processors and link holders, made safe to print:
//! control characters (and the Unicode controls that reorder text) escaped,
//! so nothing they write can forge a log line or drive a terminal, and long
//! text cut with a marker that says how much was left out.

use std::borrow::Cow;
use std::fmt;

/// Displays its text with every control character escaped: `\n`, `\r`,
/// `\t` as themselves, anything else as `\u{1b}`.
#[derive(Debug, Clone, Copy)]
pub struct Escaped<'a>(pub &'a str);

fn needs_escape(c: char) -> bool {
    c.is_control()
        // Bidirectional overrides and isolates reorder what a terminal or
        // browser shows.
        || ('\u{202a}'..='\u{202e}').contains(&c)
        || ('\u{2066}'..='\u{2069}').contains(&c)
}

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut rest = self.0;
        while let Some(at) = rest.find(needs_escape) {
            f.write_str(&rest[..at])?;
            let c = rest[at..].chars().next().expect("found above");
            match c {
                '\n' => f.write_str("\\n")?,
                '\r' => f.write_str("\\r")?,
                '\t' => f.write_str("\\t")?,
                other => write!(f, "\\u{{{:x}}}", other as u32)?,
            }
            rest = &rest[at + c.len_utf8()..];
        }
        f.write_str(rest)
    }
}

/// `text` with control characters escaped; borrowed when there were none.
pub fn escape(text: &str) -> Cow<'_, str> {
    if text.contains(needs_escape) {
        Cow::Owned(Escaped(text).to_string())
    } else {
        Cow::Borrowed(text)
    }
}

/// `text` cut to at most `max` bytes (at a character boundary), with a
/// marker saying how many bytes were cut. The marker is part of the
/// budget, so the result never exceeds `max` unless `max` is tiny.
pub fn truncate(text: &str, max: usize) -> Cow<'_, str> {
    if text.len() <= max {
        return Cow::Borrowed(text);
    }
    // The marker's own length depends on the count; 40 bytes holds any.
    let mut end = max.saturating_sub(40);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    Cow::Owned(format!(
        "{}… [{} more bytes cut]",
        &text[..end],
        text.len() - end
    ))
}

/// A log writer that keeps each record on one line and plain: control
/// characters inside a record are escaped, so a newline smuggled into a
/// field cannot start a forged record and an escape sequence cannot drive
/// the terminal (the formatter therefore writes no colours). Errors are
/// swallowed: a closed stderr must never stop the host.
pub struct OneLine<W>(pub W);

impl<W: std::io::Write> std::io::Write for OneLine<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let (body, end) = match buf.strip_suffix(b"\n") {
            Some(body) => (body, "\n"),
            None => (buf, ""),
        };
        let line = format!("{}{end}", Escaped(&String::from_utf8_lossy(body)));
        let _ = self.0.write_all(line.as_bytes());
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let _ = self.0.flush();
        Ok(())
    }
}

/// A line of JSON with the characters JSON leaves raw but a terminal acts
/// on (DEL, C1 controls, bidirectional overrides) written as `\uXXXX`
/// escapes, which any JSON reader turns back into the same text.
pub fn json_line(value: &serde_json::Value) -> String {
    let text = value.to_string();
    if !text.contains(needs_escape) {
        return text;
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if needs_escape(c) {
            // Control characters below 0x20 are already escaped by
            // serde_json; what is left fits in one UTF-16 unit.
            out.push_str(&format!("\\u{:04x}", c as u32));
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn controls_are_escaped_and_the_rest_kept() {
        assert_eq!(escape("plain text, ü"), "plain text, ü");
        assert_eq!(
            escape("a\nforged=line\r\x1b]0;title\x07\u{202e}x"),
            "a\\nforged=line\\r\\u{1b}]0;title\\u{7}\\u{202e}x"
        );
    }

    #[test]
    fn long_text_is_cut_with_a_marker() {
        assert_eq!(truncate("short", 100), "short");
        let long = "é".repeat(1000);
        let cut = truncate(&long, 100);
        assert!(cut.len() <= 100, "{}", cut.len());
        assert!(cut.ends_with("more bytes cut]"), "{cut}");
    }

    #[test]
    fn a_log_record_stays_one_line() {
        use std::io::Write as _;
        let mut out = OneLine(Vec::new());
        out.write_all("reason=a\nFORGED INFO line\r\x07\x1b]0;t \u{9b}2J end\n".as_bytes())
            .unwrap();
        assert_eq!(
            String::from_utf8(out.0).unwrap(),
            "reason=a\\nFORGED INFO line\\r\\u{7}\\u{1b}]0;t \\u{9b}2J end\n"
        );
        // A writer that fails does not fail the log call.
        struct Broken;
        impl std::io::Write for Broken {
            fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
                Err(std::io::ErrorKind::BrokenPipe.into())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Err(std::io::ErrorKind::BrokenPipe.into())
            }
        }
        assert!(OneLine(Broken).write_all(b"x\n").is_ok());
    }

    #[test]
    fn json_lines_escape_what_terminals_act_on_and_read_back_the_same() {
        let value = serde_json::json!({"reason": "a\u{9b}31m\u{7f}\u{202e}b\n"});
        let line = json_line(&value);
        assert!(!line.contains(needs_escape), "{line}");
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&line).unwrap(),
            value
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        #[test]
        fn escaped_text_has_no_controls(text in any::<String>()) {
            let escaped = escape(&text);
            prop_assert!(!escaped.contains(needs_escape));
        }

        #[test]
        fn a_json_line_reads_back_as_its_value(text in any::<String>()) {
            let value = serde_json::json!({ "t": text });
            let line = json_line(&value);
            prop_assert!(!line.contains(needs_escape));
            prop_assert_eq!(serde_json::from_str::<serde_json::Value>(&line).unwrap(), value);
        }

        #[test]
        fn a_log_record_never_holds_a_control_but_its_end(text in any::<String>()) {
            use std::io::Write as _;
            let mut out = OneLine(Vec::new());
            out.write_all(format!("{text}\n").as_bytes()).unwrap();
            let line = String::from_utf8(out.0).unwrap();
            let body = line.strip_suffix('\n').unwrap();
            prop_assert!(!body.contains(needs_escape));
        }

        #[test]
        fn truncation_stays_within_its_budget(text in any::<String>(), max in 60usize..400) {
            let cut = truncate(&text, max);
            prop_assert!(cut.len() <= max);
            if text.len() <= max { prop_assert_eq!(cut.as_ref(), text.as_str()); }
        }
    }
}
