//! A JSON object writer for the two documents written once per served
//! request: the recommendations answer and its impression event.
//!
//! Why not `serde_json` there: a profile of `scripts/bench-serve.sh` put
//! 11.5% of the api's CPU in serialising those two documents, mostly in
//! re-escaping the same field names and in chrono formatting the timestamp
//! through `fmt`. Field names here are trusted literals written as they are,
//! integers, UUIDs and timestamps are written digit by digit, and
//! escape-free strings are copied; the rest (floats, strings holding `"`, `\`
//! or control characters, years past 9999, leap seconds) still goes through
//! `serde_json`, so the bytes are exactly what `serde_json` would write. Each
//! caller keeps a test comparing its output with `serde_json`'s.

use chrono::{DateTime, Datelike, Timelike, Utc};
use serde::Serialize;
use uuid::Uuid;

/// Writes one JSON object's fields into `out`; [`Self::end`] closes it.
pub struct JsonObject<'a> {
    out: &'a mut Vec<u8>,
    empty: bool,
}

impl<'a> JsonObject<'a> {
    pub fn start(out: &'a mut Vec<u8>) -> Self {
        out.push(b'{');
        Self { out, empty: true }
    }

    /// `name` must need no escaping (a field name written in the code).
    /// Inlined, so that a literal name's copy is a few fixed-size moves.
    #[inline(always)]
    fn name(&mut self, name: &str) -> &mut Vec<u8> {
        debug_assert!(!needs_escape(name), "field name {name:?} needs escaping");
        if !self.empty {
            self.out.push(b',');
        }
        self.empty = false;
        self.out.push(b'"');
        self.out.extend_from_slice(name.as_bytes());
        self.out.extend_from_slice(b"\":");
        self.out
    }

    #[inline]
    pub fn str(&mut self, name: &str, value: &str) -> &mut Self {
        write_str(self.name(name), value);
        self
    }

    /// A string field, or `null`.
    #[inline]
    pub fn opt_str(&mut self, name: &str, value: Option<&str>) -> &mut Self {
        match value {
            Some(value) => self.str(name, value),
            None => self.raw(name, "null"),
        }
    }

    #[inline]
    pub fn int(&mut self, name: &str, value: impl itoa::Integer) -> &mut Self {
        let mut digits = itoa::Buffer::new();
        let text = digits.format(value);
        self.name(name).extend_from_slice(text.as_bytes());
        self
    }

    /// A UUID in its hyphenated lower-case form, as `uuid`'s serde writes it.
    #[inline]
    pub fn uuid(&mut self, name: &str, value: Uuid) -> &mut Self {
        let mut text = [0u8; uuid::fmt::Hyphenated::LENGTH];
        let text = value.hyphenated().encode_lower(&mut text);
        let out = self.name(name);
        out.push(b'"');
        out.extend_from_slice(text.as_bytes());
        out.push(b'"');
        self
    }

    /// RFC 3339 in UTC with `Z` and as many fraction digits as needed (0, 3,
    /// 6 or 9), as chrono's serde writes it.
    pub fn timestamp(&mut self, name: &str, value: &DateTime<Utc>) -> &mut Self {
        let nanos = value.nanosecond();
        // Years past four digits and leap seconds are chrono's to spell.
        if !(0..=9999).contains(&value.year()) || nanos >= 1_000_000_000 {
            return self.serde(name, value);
        }
        let (fraction_digits, fraction) = match nanos {
            0 => (0, 0),
            n if n % 1_000_000 == 0 => (3, n / 1_000_000),
            n if n % 1_000 == 0 => (6, n / 1_000),
            n => (9, n),
        };
        // `"YYYY-MM-DDTHH:MM:SS.fffffffffZ"`
        let mut text = *b"\"0000-00-00T00:00:00.000000000Z\"";
        let year = value.year() as u32;
        put_digits(&mut text[1..5], year);
        put_digits(&mut text[6..8], value.month());
        put_digits(&mut text[9..11], value.day());
        put_digits(&mut text[12..14], value.hour());
        put_digits(&mut text[15..17], value.minute());
        put_digits(&mut text[18..20], value.second());
        let end = if fraction_digits == 0 {
            20
        } else {
            put_digits(&mut text[21..21 + fraction_digits], fraction);
            21 + fraction_digits
        };
        text[end] = b'Z';
        text[end + 1] = b'"';
        self.name(name).extend_from_slice(&text[..end + 2]);
        self
    }

    /// Any value, written by `serde_json` (floats and other rare fields).
    pub fn serde<T: Serialize + ?Sized>(&mut self, name: &str, value: &T) -> &mut Self {
        // Writing into a Vec fails only if `T`'s own Serialize fails, which
        // the plain values passed here (numbers, timestamps) never do.
        let _ = serde_json::to_writer(&mut *self.name(name), value);
        self
    }

    /// `json` must already be valid JSON (a literal, or text serde_json wrote).
    #[inline]
    pub fn raw(&mut self, name: &str, json: &str) -> &mut Self {
        self.name(name).extend_from_slice(json.as_bytes());
        self
    }

    /// An array field whose elements `write_element` writes, each into a
    /// fresh object.
    pub fn objects<T>(
        &mut self,
        name: &str,
        elements: impl IntoIterator<Item = T>,
        mut write_element: impl FnMut(&mut JsonObject<'_>, T),
    ) -> &mut Self {
        let out = self.name(name);
        out.push(b'[');
        for (i, element) in elements.into_iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            let mut object = JsonObject::start(out);
            write_element(&mut object, element);
            object.end();
        }
        out.push(b']');
        self
    }

    pub fn end(&mut self) {
        self.out.push(b'}');
    }
}

/// `value`'s last `digits.len()` decimal digits, zero-padded, into `digits`.
fn put_digits(digits: &mut [u8], mut value: u32) {
    for digit in digits.iter_mut().rev() {
        *digit = b'0' + (value % 10) as u8;
        value /= 10;
    }
}

/// Characters JSON requires escaped: `"`, `\` and control characters.
fn needs_escape(value: &str) -> bool {
    value.bytes().any(|b| b == b'"' || b == b'\\' || b < 0x20)
}

fn write_str(out: &mut Vec<u8>, value: &str) {
    if needs_escape(value) {
        // Writing a str into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *out, value);
    } else {
        out.reserve(value.len() + 2);
        out.push(b'"');
        out.extend_from_slice(value.as_bytes());
        out.push(b'"');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize)]
    struct Item {
        id: i64,
        rank: u16,
    }

    #[derive(Serialize)]
    struct Document<'a> {
        id: Uuid,
        name: &'a str,
        note: Option<&'a str>,
        missing: Option<&'a str>,
        count: i64,
        ratio: f32,
        at: DateTime<Utc>,
        items: Vec<Item>,
        empty: Vec<Item>,
    }

    fn written(d: &Document<'_>) -> String {
        let mut out = Vec::new();
        let mut object = JsonObject::start(&mut out);
        object
            .uuid("id", d.id)
            .str("name", d.name)
            .opt_str("note", d.note)
            .opt_str("missing", d.missing)
            .int("count", d.count)
            .serde("ratio", &d.ratio)
            .timestamp("at", &d.at)
            .objects("items", &d.items, |o, item| {
                o.int("id", item.id).int("rank", item.rank);
            })
            .objects("empty", &d.empty, |o, item| {
                o.int("id", item.id);
            })
            .end();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn writes_what_serde_json_writes() {
        let times = [
            "2026-12-02T08:25:58.123456789Z",
            "2026-12-02T08:25:58.120Z",
            "2026-01-01T00:00:00.000100Z",
            "0999-02-03T04:05:06Z",
            "2026-06-30T23:59:60.5Z",
            "+12026-12-02T08:25:58Z",
        ];
        for (i, name) in [
            "plain",
            "quote \" back \\ slash",
            "tab\tand\nline",
            "",
            "ümlaut ☃",
            "x",
        ]
        .into_iter()
        .enumerate()
        {
            let at = times[i].parse().unwrap();
            let document = Document {
                id: Uuid::now_v7(),
                name,
                note: Some(name),
                missing: None,
                count: -42,
                ratio: 0.1,
                at,
                items: vec![
                    Item { id: 1, rank: 0 },
                    Item {
                        id: i64::MAX,
                        rank: 65535,
                    },
                ],
                empty: vec![],
            };
            assert_eq!(
                written(&document),
                serde_json::to_string(&document).unwrap()
            );
        }
    }
}
