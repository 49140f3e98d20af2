//! A small HTTP/1.1 server for the remote-image tests, on 127.0.0.1 with an
//! ephemeral port: fixed routes with ETag and Cache-Control, conditional GETs (304),
//! redirects, truncation on demand, and a count of the requests each path got.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

#[derive(Debug, Clone, Default)]
pub struct Route {
    pub status: u16,
    pub body: Vec<u8>,
    pub etag: Option<String>,
    pub cache_control: Option<String>,
    pub content_type: Option<String>,
    /// `Location` for a 3xx answer.
    pub location: Option<String>,
    /// Announce the whole length but close after half the body.
    pub truncate: bool,
    pub headers: Vec<(String, String)>,
    /// The `Authorization` value this route requires; otherwise 401 (with `headers`).
    pub auth: Option<String>,
}

impl Route {
    pub fn ok(body: Vec<u8>) -> Self {
        Route {
            status: 200,
            body,
            ..Route::default()
        }
    }
    pub fn redirect(to: &str) -> Self {
        Route {
            status: 302,
            location: Some(to.to_string()),
            ..Route::default()
        }
    }
    pub fn etag(mut self, etag: &str) -> Self {
        self.etag = Some(etag.to_string());
        self
    }
    pub fn cache_control(mut self, value: &str) -> Self {
        self.cache_control = Some(value.to_string());
        self
    }
    pub fn status(mut self, status: u16) -> Self {
        self.status = status;
        self
    }
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }
    pub fn requires(mut self, authorization: &str) -> Self {
        self.auth = Some(authorization.to_string());
        self
    }
    pub fn truncated(mut self) -> Self {
        self.truncate = true;
        self
    }
}

#[derive(Default)]
struct State {
    routes: Mutex<HashMap<String, Route>>,
    /// Requests per path (query string included), in arrival order.
    log: Mutex<Vec<String>>,
}

pub struct Server {
    pub addr: String,
    state: Arc<State>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    pub fn start() -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local addr").to_string();
        let state = Arc::new(State::default());
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let state = state.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(stream) = stream else { continue };
                    let state = state.clone();
                    std::thread::spawn(move || serve(stream, &state));
                }
            })
        };
        Server {
            addr,
            state,
            stop,
            thread: Some(thread),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn route(&self, path: &str, route: Route) {
        self.state
            .routes
            .lock()
            .expect("routes")
            .insert(path.to_string(), route);
    }

    pub fn remove(&self, path: &str) {
        self.state.routes.lock().expect("routes").remove(path);
    }

    /// How many requests `path` (without query) has received.
    pub fn hits(&self, path: &str) -> usize {
        self.state
            .log
            .lock()
            .expect("log")
            .iter()
            .filter(|p| p.split('?').next() == Some(path))
            .count()
    }

    pub fn log(&self) -> Vec<String> {
        self.state.log.lock().expect("log").clone()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(&self.addr);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn serve(stream: TcpStream, state: &State) {
    let mut reader = BufReader::new(match stream.try_clone() {
        Ok(s) => s,
        Err(_) => return,
    });
    let mut stream = stream;
    // A TLS ClientHello (clients try https first): this server speaks plain http only.
    let mut first = [0u8; 1];
    if stream.peek(&mut first).is_err() || first[0] == 0x16 {
        return;
    }
    // One request per connection keeps the server trivial; clients reconnect.
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
        return;
    }
    let mut headers = HashMap::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_string());
        }
    }
    let target = request_line.split_whitespace().nth(1).unwrap_or("/").to_string();
    state.log.lock().expect("log").push(target.clone());
    let path = target.split('?').next().unwrap_or("/").to_string();
    let route = {
        let routes = state.routes.lock().expect("routes");
        routes.get(&target).or_else(|| routes.get(&path)).cloned()
    };
    let Some(route) = route else {
        let _ = stream
            .write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\nConnection: close\r\n\r\nnot found");
        return;
    };
    let route = match &route.auth {
        Some(wanted) if headers.get("authorization") != Some(wanted) => Route {
            status: 401,
            body: Vec::new(),
            headers: route.headers.clone(),
            ..Route::default()
        },
        _ => route,
    };
    let mut head = String::new();
    let not_modified =
        route.etag.is_some() && headers.get("if-none-match") == route.etag.as_ref() && route.status == 200;
    let status = if not_modified { 304 } else { route.status };
    let reason = match status {
        200 => "OK",
        302 => "Found",
        304 => "Not Modified",
        401 => "Unauthorized",
        404 => "Not Found",
        _ => "Status",
    };
    head.push_str(&format!("HTTP/1.1 {status} {reason}\r\nConnection: close\r\n"));
    if let Some(etag) = &route.etag {
        head.push_str(&format!("ETag: {etag}\r\n"));
    }
    if let Some(cc) = &route.cache_control {
        head.push_str(&format!("Cache-Control: {cc}\r\n"));
    }
    if let Some(ct) = &route.content_type {
        head.push_str(&format!("Content-Type: {ct}\r\n"));
    }
    for (name, value) in &route.headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    if let Some(location) = &route.location {
        head.push_str(&format!("Location: {location}\r\n"));
    }
    let body: &[u8] = if not_modified { &[] } else { &route.body };
    head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    if stream.write_all(head.as_bytes()).is_err() {
        return;
    }
    let sent = if route.truncate {
        &body[..body.len() / 2]
    } else {
        body
    };
    let _ = stream.write_all(sent);
    let _ = stream.flush();
    let _ = stream.shutdown(Shutdown::Both);
    // Drain nothing more: the connection is done.
    let _ = reader.read(&mut [0u8; 0]);
}
