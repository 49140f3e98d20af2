//! A one-file HTTP server on 127.0.0.1 for the fetch scenario. Bound before
//! anything asks (no readiness race), and the body goes out with
//! `std::io::copy`, which is sendfile(2) from a file to a socket, so the server's
//! own cost stays well under either client's.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// Serves `file` at `/NAME` (its file name) until the program exits.
pub struct FileServer {
    pub url: String,
}

impl FileServer {
    pub fn start(file: &Path) -> Result<FileServer> {
        let listener = TcpListener::bind("127.0.0.1:0").context("binding 127.0.0.1:0")?;
        let name = file
            .file_name()
            .context("the served file has no name")?
            .to_string_lossy()
            .into_owned();
        let url = format!("http://{}/{name}", listener.local_addr()?);
        let file = file.to_path_buf();
        let path = format!("/{name}");
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                // One client at a time is all the scenario asks for.
                let _ = serve(stream, &path, &file);
            }
        });
        Ok(FileServer { url })
    }
}

fn serve(stream: TcpStream, path: &str, file: &PathBuf) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request = String::new();
    reader.read_line(&mut request)?;
    // The headers are read and ignored, so the client never sees a reset.
    let mut header = String::new();
    while reader.read_line(&mut header)? > 2 {
        header.clear();
    }
    let mut words = request.split_whitespace();
    let (method, target) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let mut out = stream;
    if target != path || !matches!(method, "GET" | "HEAD") {
        return out.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    }
    let mut body = File::open(file)?;
    let len = body.metadata()?.len();
    write!(
        out,
        "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n"
    )?;
    if method == "GET" {
        std::io::copy(&mut body, &mut out)?;
    }
    out.flush()
}
