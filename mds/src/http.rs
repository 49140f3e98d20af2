//! Just enough HTTP/1.1 for the metadata service: one request per connection
//! (every answer says `Connection: close`), bodies by Content-Length only, and
//! hard limits on the head and the body so a client cannot make us buffer much.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Longest request head (request line and headers) we read.
const MAX_HEAD: usize = 16 * 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    /// The path, still percent-encoded.
    pub path: String,
    pub query: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// A form value as Go's `FormValue` finds it: the urlencoded body first,
    /// then the query string.
    pub fn form_value(&self, key: &str) -> Option<String> {
        let body = if self
            .header("Content-Type")
            .is_some_and(|t| t.starts_with("application/x-www-form-urlencoded"))
        {
            String::from_utf8_lossy(&self.body).into_owned()
        } else {
            String::new()
        };
        form_lookup(&body, key).or_else(|| form_lookup(&self.query, key))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
}

pub const JSON: &str = "application/json";
pub const TEXT: &str = "text/plain; charset=us-ascii";

impl Response {
    pub fn json(body: Vec<u8>) -> Self {
        Response {
            status: 200,
            content_type: JSON,
            headers: Vec::new(),
            body,
        }
    }
    /// A text body exactly as given: no trailing newline is added.
    pub fn text(status: u16, body: impl Into<String>) -> Self {
        Response {
            status,
            content_type: TEXT,
            headers: Vec::new(),
            body: body.into().into_bytes(),
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut head = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n",
            self.status,
            reason(self.status),
            self.content_type,
            self.body.len()
        );
        for (name, value) in &self.headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        let mut out = head.into_bytes();
        out.extend_from_slice(&self.body);
        out
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        411 => "Length Required",
        413 => "Payload Too Large",
        431 => "Request Header Fields Too Large",
        501 => "Not Implemented",
        _ => "Error",
    }
}

/// Why a request could not be read; `Some(response)` is what to answer with.
#[derive(Debug)]
pub enum ReadError {
    /// The peer went away or the socket failed: nothing to answer.
    Gone,
    Bad(Response),
}

/// Reads one request, its body at most `max_body` bytes.
pub async fn read_request<S: AsyncRead + Unpin>(
    stream: &mut S,
    max_body: usize,
) -> Result<Request, ReadError> {
    let mut buf = Vec::with_capacity(1024);
    let head_end = loop {
        if let Some(end) = find(&buf, b"\r\n\r\n") {
            break end;
        }
        if buf.len() > MAX_HEAD {
            return Err(ReadError::Bad(Response::text(431, "request head too large")));
        }
        let mut chunk = [0u8; 2048];
        let n = stream.read(&mut chunk).await.map_err(|_| ReadError::Gone)?;
        if n == 0 {
            return Err(ReadError::Gone);
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let bad = |why: &str| ReadError::Bad(Response::text(400, why.to_string()));
    let head = std::str::from_utf8(&buf[..head_end]).map_err(|_| bad("request head is not UTF-8"))?;
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad("malformed request line"));
    };
    if !version.starts_with("HTTP/1.") {
        return Err(bad("only HTTP/1.x is served"));
    }
    let mut headers = Vec::new();
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            return Err(bad("malformed header"));
        };
        headers.push((name.trim().to_string(), value.trim().to_string()));
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut request = Request {
        method: method.to_string(),
        path: path.to_string(),
        query: query.to_string(),
        headers,
        body: Vec::new(),
    };
    if request.header("Transfer-Encoding").is_some() {
        return Err(ReadError::Bad(Response::text(
            501,
            "only Content-Length bodies are served",
        )));
    }
    let length = match request.header("Content-Length") {
        None => 0,
        Some(v) => v.parse::<usize>().map_err(|_| bad("bad Content-Length"))?,
    };
    if length > max_body {
        return Err(ReadError::Bad(Response::text(413, "request body too large")));
    }
    let mut body = buf[head_end + 4..].to_vec();
    body.truncate(length);
    if body.len() < length {
        let start = body.len();
        body.resize(length, 0);
        stream
            .read_exact(&mut body[start..])
            .await
            .map_err(|_| ReadError::Gone)?;
    }
    request.body = body;
    Ok(request)
}

pub async fn write_response<S: AsyncWrite + Unpin>(
    stream: &mut S,
    response: &Response,
) -> std::io::Result<()> {
    stream.write_all(&response.to_bytes()).await?;
    stream.shutdown().await
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn form_lookup(encoded: &str, key: &str) -> Option<String> {
    encoded
        .split('&')
        .filter_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k, true)? == key).then(|| percent_decode(v, true))?
        })
        .next()
}

/// Decodes `%XX` escapes (and `+` as a space in forms); None when an escape is
/// malformed or the result is not UTF-8.
pub fn percent_decode(s: &str, plus_is_space: bool) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes.get(i + 1..i + 3)?;
                let hex = std::str::from_utf8(hex).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn parse(raw: &[u8]) -> Result<Request, ReadError> {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let mut input = raw;
        rt.block_on(read_request(&mut input, 1024))
    }

    #[test]
    fn a_form_post_is_read_whole() {
        let body = "content=Old+MacDonald%21&x=1";
        let raw = format!(
            "POST /t/acMetadata/v1/pod/hmac/sign?uuid=u HTTP/1.1\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let r = parse(raw.as_bytes()).unwrap();
        assert_eq!(r.method, "POST");
        assert_eq!(r.path, "/t/acMetadata/v1/pod/hmac/sign");
        assert_eq!(r.form_value("content").as_deref(), Some("Old MacDonald!"));
        assert_eq!(r.form_value("uuid").as_deref(), Some("u"));
        assert_eq!(r.form_value("missing"), None);
    }

    #[test]
    fn oversized_and_chunked_requests_are_refused() {
        let raw = "PUT /x HTTP/1.1\r\nContent-Length: 999999\r\n\r\n";
        assert!(matches!(parse(raw.as_bytes()), Err(ReadError::Bad(r)) if r.status == 413));
        let raw = "PUT /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert!(matches!(parse(raw.as_bytes()), Err(ReadError::Bad(r)) if r.status == 501));
        let raw = "GARBAGE\r\n\r\n";
        assert!(matches!(parse(raw.as_bytes()), Err(ReadError::Bad(r)) if r.status == 400));
        let raw = vec![b'a'; MAX_HEAD + 10];
        assert!(matches!(parse(&raw), Err(ReadError::Bad(r)) if r.status == 431));
    }

    #[test]
    fn text_bodies_have_no_trailing_newline() {
        let bytes = Response::text(200, "abc").to_bytes();
        let text = String::from_utf8(bytes).unwrap();
        assert!(text.ends_with("\r\n\r\nabc"), "{text:?}");
        assert!(text.contains("Content-Type: text/plain; charset=us-ascii\r\n"));
        assert!(text.contains("Content-Length: 3\r\n"));
    }
}
