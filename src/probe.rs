//! What `fanout probe` does: one HTTP/1.1 GET, success on a 2xx answer. The image has no shell
//! and no HTTP client, so the chart's `helm test` hook runs this to check that the controller
//! answers on its Service.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("{0:?} is not an http://HOST[:PORT][/PATH] URL")]
    BadUrl(String),
    #[error("{url}: {source}")]
    Io {
        url: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{url}: no HTTP status line in the answer")]
    NoStatus { url: String },
    #[error("{url}: answered {status}")]
    NotOk { url: String, status: u16 },
}

/// The parts of an `http://` URL a GET needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub host: String,
    pub port: u16,
    pub path: String,
}

/// Parses `http://HOST[:PORT][/PATH]` (port 80 by default, path `/`).
pub fn parse_url(url: &str) -> Result<Target, ProbeError> {
    let bad = || ProbeError::BadUrl(url.to_string());
    let rest = url.strip_prefix("http://").ok_or_else(bad)?;
    let (authority, path) = match rest.find('/') {
        Some(at) => (&rest[..at], &rest[at..]),
        None => (rest, "/"),
    };
    let (host, port) = match authority.rsplit_once(':') {
        Some((host, port)) if !authority.ends_with(']') => (host, port.parse().map_err(|_| bad())?),
        _ => (authority, 80),
    };
    if host.is_empty() {
        return Err(bad());
    }
    Ok(Target {
        host: host.trim_start_matches('[').trim_end_matches(']').to_string(),
        port,
        path: path.to_string(),
    })
}

/// The status code of an HTTP/1.x status line.
pub fn status_code(answer: &str) -> Option<u16> {
    let line = answer.lines().next()?;
    let mut words = line.split_whitespace();
    words.next().filter(|version| version.starts_with("HTTP/1."))?;
    words.next()?.parse().ok()
}

/// GETs `url` within `timeout` (per connect, write and read); the status code if it is 2xx.
pub fn probe(url: &str, timeout: Duration) -> Result<u16, ProbeError> {
    let target = parse_url(url)?;
    let io = |source| ProbeError::Io {
        url: url.to_string(),
        source,
    };
    let address = (target.host.as_str(), target.port)
        .to_socket_addrs()
        .map_err(io)?
        .next()
        .ok_or_else(|| io(std::io::Error::new(std::io::ErrorKind::NotFound, "no address")))?;
    let mut stream = TcpStream::connect_timeout(&address, timeout).map_err(io)?;
    stream.set_read_timeout(Some(timeout)).map_err(io)?;
    stream.set_write_timeout(Some(timeout)).map_err(io)?;
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nUser-Agent: fanout-probe\r\n\r\n",
        target.path, target.host
    );
    stream.write_all(request.as_bytes()).map_err(io)?;
    // The status line is all we read: a small, bounded answer.
    let mut answer = vec![0u8; 256];
    let mut filled = 0;
    while filled < answer.len() {
        match stream.read(&mut answer[filled..]) {
            Ok(0) => break,
            Ok(n) => {
                filled += n;
                if answer[..filled].contains(&b'\n') {
                    break;
                }
            }
            Err(err) => return Err(io(err)),
        }
    }
    let status = status_code(&String::from_utf8_lossy(&answer[..filled]))
        .ok_or_else(|| ProbeError::NoStatus { url: url.to_string() })?;
    if (200..300).contains(&status) {
        Ok(status)
    } else {
        Err(ProbeError::NotOk {
            url: url.to_string(),
            status,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_with_default_port_and_path() {
        let t = |host: &str, port, path: &str| Target {
            host: host.into(),
            port,
            path: path.into(),
        };
        assert_eq!(
            parse_url("http://fanout-metrics:8080/readyz").unwrap(),
            t("fanout-metrics", 8080, "/readyz")
        );
        assert_eq!(parse_url("http://10.0.0.1").unwrap(), t("10.0.0.1", 80, "/"));
        assert_eq!(parse_url("http://[::1]:9/x?y").unwrap(), t("::1", 9, "/x?y"));
        for bad in ["https://x/", "x:1", "http://:80/", "http://h:port/"] {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn status_lines_are_read() {
        assert_eq!(status_code("HTTP/1.1 200 OK\r\n"), Some(200));
        assert_eq!(status_code("HTTP/1.0 503 Service Unavailable\r\n"), Some(503));
        assert_eq!(status_code("SSH-2.0-x\r\n"), None);
        assert_eq!(status_code(""), None);
    }

    #[test]
    fn a_local_server_answers_and_a_refusal_is_an_error() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            for answer in ["HTTP/1.1 200 OK\r\n\r\nready\n", "HTTP/1.1 503 No\r\n\r\n"] {
                let (mut stream, _) = listener.accept().unwrap();
                let mut request = [0u8; 512];
                let _ = stream.read(&mut request).unwrap();
                stream.write_all(answer.as_bytes()).unwrap();
            }
        });
        let url = format!("http://127.0.0.1:{port}/readyz");
        assert_eq!(probe(&url, Duration::from_secs(5)).unwrap(), 200);
        assert!(matches!(
            probe(&url, Duration::from_secs(5)),
            Err(ProbeError::NotOk { status: 503, .. })
        ));
        server.join().unwrap();
    }
}
