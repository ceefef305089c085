//! Values from etcd and AWS shown to people: in log lines, in the tables of `plan` and `status`
//! and in metric labels.
//!
//! Anyone who can write a key under the prefix (every container host can) chooses bytes that
//! lbmanager prints. A newline in a key would start a second log line that reads like lbmanager's
//! own, and an ANSI escape sequence would be interpreted by the terminal of whoever runs `plan`.
//! So every such value is shown with its control characters (and the invisible ones that reorder
//! text) escaped, `\n`, `\u{1b}`, never interpreted. For logs this is done once for every value
//! of every line by [`Escaping`], a drain in front of the text formatter: no call site can forget.

use std::borrow::Cow;
use std::fmt;

use slog::{Drain, Key, OwnedKVList, Record, RecordStatic, Serializer, KV};

/// Whether `c` is shown escaped: control characters (C0, DEL, C1) and the format characters that
/// reorder or hide text (bidirectional overrides and isolates, zero-width characters, BOM).
fn hidden(c: char) -> bool {
    c.is_control()
        || matches!(c,
            '\u{200b}'..='\u{200f}' | '\u{2028}'..='\u{202e}' | '\u{2060}'..='\u{2069}' | '\u{feff}')
}

/// `s` with every control or text-reordering character escaped as Rust writes it (`\n`, `\t`,
/// `\u{1b}`); a backslash is doubled only where the text has something escaped, so a plain value
/// reads as it is and an escaped one cannot be mistaken for a plain one.
pub fn escape(s: &str) -> Cow<'_, str> {
    if !s.chars().any(hidden) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if hidden(c) || c == '\\' {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// `s`, or its beginning of at most `max` bytes (on a character's boundary): a value kept
/// within a bound, unescaped.
pub fn within(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// The beginning of `s` (its first `max` characters, escaped, and `…` where it goes on): for a
/// value too long to show whole, such as a key past [`crate::key::MAX_KEY_BYTES`].
pub fn clip(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        None => escape(s).into_owned(),
        Some((end, _)) => format!("{}…", escape(&s[..end])),
    }
}

/// One key-value of a log line, its value already escaped where it is text.
enum Value {
    Text(String),
    U64(u64),
    I64(i64),
    F64(f64),
    Bool(bool),
    Unit,
    None,
}

/// Gathers a record's key-values (escaping text) in the order the formatter would see them.
#[derive(Default)]
struct Gather(Vec<(Key, Value)>);

impl Serializer for Gather {
    fn emit_arguments(&mut self, key: Key, val: &fmt::Arguments<'_>) -> slog::Result {
        let text = val.to_string();
        self.0.push((key, Value::Text(escape(&text).into_owned())));
        Ok(())
    }
    fn emit_u64(&mut self, key: Key, val: u64) -> slog::Result {
        self.0.push((key, Value::U64(val)));
        Ok(())
    }
    fn emit_i64(&mut self, key: Key, val: i64) -> slog::Result {
        self.0.push((key, Value::I64(val)));
        Ok(())
    }
    fn emit_f64(&mut self, key: Key, val: f64) -> slog::Result {
        self.0.push((key, Value::F64(val)));
        Ok(())
    }
    fn emit_bool(&mut self, key: Key, val: bool) -> slog::Result {
        self.0.push((key, Value::Bool(val)));
        Ok(())
    }
    fn emit_unit(&mut self, key: Key) -> slog::Result {
        self.0.push((key, Value::Unit));
        Ok(())
    }
    fn emit_none(&mut self, key: Key) -> slog::Result {
        self.0.push((key, Value::None));
        Ok(())
    }
}

impl KV for Gather {
    fn serialize(&self, _: &Record, s: &mut dyn Serializer) -> slog::Result {
        for (key, value) in &self.0 {
            match value {
                Value::Text(t) => s.emit_str(key, t)?,
                Value::U64(v) => s.emit_u64(key, *v)?,
                Value::I64(v) => s.emit_i64(key, *v)?,
                Value::F64(v) => s.emit_f64(key, *v)?,
                Value::Bool(v) => s.emit_bool(key, *v)?,
                Value::Unit => s.emit_unit(key)?,
                Value::None => s.emit_none(key)?,
            }
        }
        Ok(())
    }
}

/// A drain that hands `inner` every record with its message and every text value escaped (see
/// [`escape`]): one line per event, whatever the values hold.
pub struct Escaping<D>(pub D);

impl<D: Drain> Drain for Escaping<D> {
    type Ok = D::Ok;
    type Err = D::Err;

    fn log(&self, record: &Record, values: &OwnedKVList) -> Result<D::Ok, D::Err> {
        let mut kv = Gather::default();
        // As the formatter would: the record's own key-values, then the logger's.
        let _ = record.kv().serialize(record, &mut kv);
        let _ = values.serialize(record, &mut kv);
        let msg = record.msg().to_string();
        let msg = escape(&msg);
        let args = format_args!("{msg}");
        let rs = RecordStatic {
            location: record.location(),
            tag: record.tag(),
            level: record.level(),
        };
        let escaped = Record::new(&rs, &args, slog::BorrowedKV(&kv));
        self.0.log(&escaped, &OwnedKVList::from(slog::o!()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[test]
    fn plain_text_is_left_as_it_is() {
        assert!(matches!(
            escape("/lbManager/elb/us-east-1/web/multiple/i-0abc"),
            Cow::Borrowed(_)
        ));
        assert_eq!(escape("δ ünïcode C:\\dir"), "δ ünïcode C:\\dir");
    }

    #[test]
    fn control_and_reordering_characters_are_shown_not_interpreted() {
        assert_eq!(escape("a\nb"), "a\\nb");
        assert_eq!(escape("\u{1b}[31mred"), "\\u{1b}[31mred");
        assert_eq!(escape("x\r\t\0"), "x\\r\\t\\u{0}");
        assert_eq!(escape("abc\u{202e}fed"), "abc\\u{202e}fed");
        assert_eq!(escape("\u{85}"), "\\u{85}");
        // With something escaped, a backslash is doubled: `\n` typed as text stays apart from a
        // newline.
        assert_eq!(escape("a\\nb\n"), "a\\\\nb\\n");
        for s in ["a\nb", "\u{1b}[2J", "x\u{7f}y", "z\u{2028}"] {
            assert!(!escape(s).chars().any(hidden), "{s:?}");
        }
    }

    #[test]
    fn clip_shows_the_beginning_and_the_length() {
        assert_eq!(clip("short", 10), "short");
        let long = format!("/lbManager/elb/{}", "x".repeat(5000));
        let c = clip(&long, 20);
        assert_eq!(c, "/lbManager/elb/xxxxx…");
        assert_eq!(clip("a\nbcdef", 3), "a\\nb…");
    }

    /// Writes what the formatter writes into a buffer.
    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_log_line_stays_one_line_whatever_its_values_hold() {
        let buf = Buf::default();
        let decorator = slog_term::PlainSyncDecorator::new(buf.clone());
        let drain = Escaping(slog_term::FullFormat::new(decorator).build()).fuse();
        let log = slog::Logger::root(drain, slog::o!("actor" => "sup\nervisor"));
        let key = "/lbManager/elb/us-east-1/web/multiple/i-0\nDec 03 21:00:00.000 INFO registered \
                   instances, added: i-0evil";
        slog::warn!(log, "ignoring malformed key {}", "\u{1b}[2J"; "key" => key, "count" => 3u64);
        let out = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        assert_eq!(out.lines().count(), 1, "{out}");
        assert!(!out.contains('\u{1b}'), "{out}");
        assert!(out.contains("i-0\\nDec 03"), "{out}");
        assert!(out.contains("actor: sup\\nervisor"), "{out}");
        assert!(out.contains("count: 3"), "{out}");
        assert!(out.contains("\\u{1b}[2J"), "{out}");
    }
}
