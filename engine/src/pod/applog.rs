//! The format of each app's log in the pod (`protocol::app_log`): one record a
//! line, `TIMESTAMP STREAM TAG MESSAGE`, the kubelet's CRI log format, so the
//! CRI server can hand the files out as they are. TIMESTAMP is RFC 3339 in UTC
//! with nanoseconds, STREAM `stdout` or `stderr`, TAG `F` for a full line or
//! `P` for a piece of a longer one (continued by the next record).

use std::time::{SystemTime, UNIX_EPOCH};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogStream {
    Stdout,
    Stderr,
}

impl LogStream {
    pub fn as_str(self) -> &'static str {
        match self {
            LogStream::Stdout => "stdout",
            LogStream::Stderr => "stderr",
        }
    }
}

/// One parsed record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRecord<'a> {
    pub timestamp: &'a str,
    pub stream: LogStream,
    /// False for `P`: the message continues in the next record.
    pub full: bool,
    pub message: &'a [u8],
}

/// Appends the records for `bytes` (whole lines, except an unterminated tail,
/// which becomes a `P` record unless `eof`) to `out`.
pub fn encode(time: SystemTime, stream: LogStream, bytes: &[u8], eof: bool, out: &mut Vec<u8>) {
    let stamp = rfc3339_nanos(time);
    let mut rest = bytes;
    while !rest.is_empty() {
        let (message, full, next) = match rest.iter().position(|b| *b == b'\n') {
            Some(i) => (&rest[..i], true, &rest[i + 1..]),
            None => (rest, eof, &rest[rest.len()..]),
        };
        out.extend_from_slice(stamp.as_bytes());
        out.push(b' ');
        out.extend_from_slice(stream.as_str().as_bytes());
        out.extend_from_slice(if full { b" F " } else { b" P " });
        out.extend_from_slice(message);
        out.push(b'\n');
        rest = next;
    }
}

/// Parses one record (without its newline); None for anything else.
pub fn parse(line: &[u8]) -> Option<LogRecord<'_>> {
    let mut parts = line.splitn(4, |b| *b == b' ');
    let timestamp = std::str::from_utf8(parts.next()?).ok()?;
    let stream = match parts.next()? {
        b"stdout" => LogStream::Stdout,
        b"stderr" => LogStream::Stderr,
        _ => return None,
    };
    let full = match parts.next()? {
        b"F" => true,
        b"P" => false,
        _ => return None,
    };
    Some(LogRecord {
        timestamp,
        stream,
        full,
        message: parts.next().unwrap_or_default(),
    })
}

/// The app's output as it wrote it: each record's message, with the newline
/// a full record stands for.
pub fn decode(bytes: &[u8], out: &mut Vec<u8>) {
    for line in bytes.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        match parse(line) {
            Some(r) => {
                out.extend_from_slice(r.message);
                if r.full {
                    out.push(b'\n');
                }
            }
            // Not a record (written by an older init): passed on as is.
            None => {
                out.extend_from_slice(line);
                out.push(b'\n');
            }
        }
    }
}

/// `2006-01-02T15:04:05.999999999Z`, always nine digits.
pub fn rfc3339_nanos(time: SystemTime) -> String {
    let d = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, day) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:09}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_nanos()
    )
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (Howard
/// Hinnant's algorithm).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn timestamps_are_rfc3339_with_nanoseconds() {
        let t = UNIX_EPOCH + Duration::new(1_475_713_029, 669_794_202);
        assert_eq!(rfc3339_nanos(t), "2016-10-06T00:17:09.669794202Z");
        assert_eq!(rfc3339_nanos(UNIX_EPOCH), "1970-01-01T00:00:00.000000000Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert!(rfc3339_nanos(leap).starts_with("2000-02-29T00:00:00"));
    }

    #[test]
    fn lines_become_full_and_partial_records_and_back() {
        let t = UNIX_EPOCH + Duration::new(1_475_713_029, 1);
        let mut out = Vec::new();
        encode(t, LogStream::Stderr, b"one\ntwo words\nhalf", false, &mut out);
        let text = String::from_utf8(out.clone()).unwrap();
        assert_eq!(
            text,
            "2016-10-06T00:17:09.000000001Z stderr F one\n\
             2016-10-06T00:17:09.000000001Z stderr F two words\n\
             2016-10-06T00:17:09.000000001Z stderr P half\n"
        );
        let r = parse(text.lines().nth(1).unwrap().as_bytes()).unwrap();
        assert_eq!(
            (r.stream, r.full, r.message),
            (LogStream::Stderr, true, &b"two words"[..])
        );
        let mut back = Vec::new();
        decode(&out, &mut back);
        assert_eq!(back, b"one\ntwo words\nhalf");
        assert_eq!(parse(b"garbage"), None);
    }
}
