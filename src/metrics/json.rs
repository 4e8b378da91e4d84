//! A JSON writer for the `/metrics` document: objects whose keys are literals, written as
//! pushes of pre-spelled bytes, and numbers written without a serializer in between.
//!
//! With a thousand clients the document is close to a megabyte of mostly keys and numbers,
//! and serde_json's generic path (a key escaped byte by byte, a formatter call per token)
//! took more time than reading every histogram. Here each `,"key":` is one constant copied in
//! place ([`json_object!`]), and the output is byte for byte serde_json's compact output for
//! the same values (tested against it). Must never: write a key that needs escaping (keys
//! are identifiers typed in the source) or a string without escaping it.

use std::io::Write as _;
use std::net::SocketAddr;

use serde::Serialize;

/// A value that writes itself as JSON, exactly as serde_json's compact serializer would.
pub trait WriteJson {
    /// Appends the value's JSON to `out`.
    fn write_json(&self, out: &mut Vec<u8>);
}

/// Writes `{"k1":v1,"k2":v2,…}` into a `Vec<u8>`; keys are string literals (identifiers),
/// values anything [`WriteJson`]. Each key with its quotes, colon and comma is one constant.
macro_rules! json_object {
    ($out:expr; $first:literal => $value:expr $(, $key:literal => $val:expr)* $(,)?) => {{
        let out: &mut Vec<u8> = $out;
        out.extend_from_slice(concat!("{\"", $first, "\":").as_bytes());
        $crate::metrics::json::WriteJson::write_json(&$value, out);
        $(
            out.extend_from_slice(concat!(",\"", $key, "\":").as_bytes());
            $crate::metrics::json::WriteJson::write_json(&$val, out);
        )*
        out.push(b'}');
    }};
}
pub(crate) use json_object;

macro_rules! integers {
    ($($t:ty),*) => {$(
        impl WriteJson for $t {
            #[inline]
            fn write_json(&self, out: &mut Vec<u8>) {
                out.extend_from_slice(itoa::Buffer::new().format(*self).as_bytes());
            }
        }
    )*};
}
integers!(u8, u32, u64, usize, i64);

impl WriteJson for bool {
    #[inline]
    fn write_json(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(if *self { b"true" } else { b"false" });
    }
}

impl WriteJson for f64 {
    /// serde_json's spelling: `null` unless finite, whole-nanosecond milliseconds through
    /// integer arithmetic (see [`millis_of_nanos`]), any other float through serde_json's
    /// own shortest round-trip formatting.
    #[inline]
    fn write_json(&self, out: &mut Vec<u8>) {
        if !self.is_finite() {
            out.extend_from_slice(b"null");
        } else if let Some(ns) = millis_of_nanos(*self) {
            out.extend_from_slice(MillisText::new(ns).as_bytes());
        } else {
            use serde_json::ser::Formatter as _;
            let _ = serde_json::ser::CompactFormatter.write_f64(out, *self);
        }
    }
}

impl WriteJson for str {
    fn write_json(&self, out: &mut Vec<u8>) {
        // serde_json's escaping: strings here may come from users (session codes).
        let _ = serde_json::to_writer(&mut *out, self);
    }
}

impl WriteJson for String {
    fn write_json(&self, out: &mut Vec<u8>) {
        self.as_str().write_json(out);
    }
}

impl WriteJson for SocketAddr {
    fn write_json(&self, out: &mut Vec<u8>) {
        // Digits, dots, colons, brackets and `%`: nothing to escape.
        out.push(b'"');
        let _ = write!(out, "{self}");
        out.push(b'"');
    }
}

impl<T: WriteJson + ?Sized> WriteJson for &T {
    #[inline]
    fn write_json(&self, out: &mut Vec<u8>) {
        (**self).write_json(out);
    }
}

impl<T: WriteJson> WriteJson for Option<T> {
    fn write_json(&self, out: &mut Vec<u8>) {
        match self {
            Some(value) => value.write_json(out),
            None => out.extend_from_slice(b"null"),
        }
    }
}

impl<T: WriteJson> WriteJson for [T] {
    fn write_json(&self, out: &mut Vec<u8>) {
        out.push(b'[');
        for (i, item) in self.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            item.write_json(out);
        }
        out.push(b']');
    }
}

impl<T: WriteJson> WriteJson for Vec<T> {
    fn write_json(&self, out: &mut Vec<u8>) {
        self.as_slice().write_json(out);
    }
}

/// A value written by a closure: the parts of the document assembled around other writes.
pub struct With<F>(pub F);

impl<F: Fn(&mut Vec<u8>)> WriteJson for With<F> {
    fn write_json(&self, out: &mut Vec<u8>) {
        (self.0)(out);
    }
}

/// A value written through serde (with [`Formatter`]): for the few small objects per session
/// or document whose types live elsewhere and have their own serde form.
pub struct Serde<'a, T: ?Sized>(pub &'a T);

impl<T: Serialize + ?Sized> WriteJson for Serde<'_, T> {
    fn write_json(&self, out: &mut Vec<u8>) {
        write_serde(out, self.0);
    }
}

/// `value` as serde_json's compact output, with [`Formatter`]'s spelling of floats.
pub fn write_serde<T: Serialize + ?Sized>(out: &mut Vec<u8>, value: &T) {
    let mut serializer = serde_json::Serializer::with_formatter(out, Formatter);
    value
        .serialize(&mut serializer)
        .expect("numbers and strings always serialise");
}

/// serde_json's compact formatter with [`WriteJson`]'s spelling of floats (the same bytes,
/// fewer cycles), for values that go through serde.
pub struct Formatter;

impl serde_json::ser::Formatter for Formatter {
    fn write_f64<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
        value: f64,
    ) -> std::io::Result<()> {
        match millis_of_nanos(value) {
            Some(ns) => writer.write_all(MillisText::new(ns).as_bytes()),
            None => serde_json::ser::CompactFormatter.write_f64(writer, value),
        }
    }
}

/// Whole nanoseconds `ns` with `ns as f64 / 1e6 == value`, when the decimal of ns / 10⁶
/// (at most six decimals) is exactly what serde_json's shortest round-trip formatting prints
/// for `value`: from 10 ns (below, it switches to exponents: `1e-6`) to 2³² ms, where an f64
/// step is under 10⁻⁶, so no other decimal of six places or fewer rounds to `value` and the
/// shortest one is ns / 10⁶ itself. `None` for every other float.
fn millis_of_nanos(value: f64) -> Option<u64> {
    const MAX_MS: f64 = 4_294_967_296.0; // 2³²
    if !(1e-5..MAX_MS).contains(&value) {
        return None;
    }
    let ns = (value * 1e6).round() as u64;
    (ns as f64 / 1e6 == value).then_some(ns)
}

/// ns / 10⁶ as serde_json prints it: `12.5`, `0.0425`, `3.0`.
struct MillisText {
    buf: [u8; 32],
    len: usize,
}

impl MillisText {
    fn new(ns: u64) -> Self {
        let mut text = Self {
            buf: [0; 32],
            len: 0,
        };
        let mut whole = itoa::Buffer::new();
        let whole = whole.format(ns / 1_000_000).as_bytes();
        text.buf[..whole.len()].copy_from_slice(whole);
        text.buf[whole.len()] = b'.';
        let mut len = whole.len() + 1;
        let mut frac = (ns % 1_000_000) as u32;
        if frac == 0 {
            text.buf[len] = b'0';
            len += 1;
        } else {
            let mut digits = 6;
            while frac % 10 == 0 {
                frac /= 10;
                digits -= 1;
            }
            for i in (0..digits).rev() {
                text.buf[len + i] = b'0' + (frac % 10) as u8;
                frac /= 10;
            }
            len += digits;
        }
        text.len = len;
        text
    }

    fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ours(value: &impl WriteJson) -> String {
        let mut out = Vec::new();
        value.write_json(&mut out);
        String::from_utf8(out).unwrap()
    }

    /// `value` through serde, with and without [`Formatter`], and through [`WriteJson`]:
    /// all three the same bytes.
    fn check_float(value: f64) {
        let reference = serde_json::to_string(&value).unwrap();
        let mut via_formatter = Vec::new();
        write_serde(&mut via_formatter, &value);
        assert_eq!(
            String::from_utf8(via_formatter).unwrap(),
            reference,
            "{value:e}"
        );
        assert_eq!(ours(&value), reference, "{value:e}");
    }

    #[test]
    fn floats_print_as_serde_json_prints_them() {
        // Every nanosecond up to 3 ms, then a spread up to and past 2³² ms.
        for ns in 0..3_000_000u64 {
            check_float(ns as f64 / 1e6);
        }
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..1_000_000 {
            let ns = next() >> (next() % 64);
            for value in [
                ns as f64 / 1e6,
                ns as f64 / 1e3,
                f64::from_bits(next()),
                (ns as f64 / 1e6).next_up(),
            ] {
                check_float(value);
            }
        }
        for value in [
            0.0,
            -0.0,
            1e-5,
            4_294_967_296.0,
            4_294_967_295.999_999,
            1e15,
            f64::NAN,
            f64::INFINITY,
        ] {
            check_float(value);
        }
    }

    #[test]
    fn values_and_objects_print_as_serde_json_prints_them() {
        let addr: SocketAddr = "[fe80::1%2]:8000".parse().unwrap();
        assert_eq!(ours(&addr), serde_json::to_string(&addr).unwrap());
        let v4: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        assert_eq!(ours(&v4), serde_json::to_string(&v4).unwrap());
        for s in [
            "plain",
            "quote \" back \\ slash",
            "tab\tnewline\n\u{1}",
            "ünï",
        ] {
            assert_eq!(ours(&s), serde_json::to_string(s).unwrap());
        }
        for n in [0u64, 7, u64::MAX] {
            assert_eq!(ours(&n), n.to_string());
        }
        assert_eq!(ours(&-5i64), "-5");
        assert_eq!(ours(&Some(true)), "true");
        assert_eq!(ours(&None::<u64>), "null");
        assert_eq!(ours(&vec![1u64, 2, 3]), "[1,2,3]");
        assert_eq!(ours(&Vec::<u64>::new()), "[]");
        let mut out = Vec::new();
        json_object!(&mut out;
            "a" => 1u64,
            "b" => With(|out: &mut Vec<u8>| json_object!(out; "c" => 0.25f64)),
            "d" => Serde(&serde_json::json!({"e": [1.5]})),
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"{"a":1,"b":{"c":0.25},"d":{"e":[1.5]}}"#
        );
    }
}
