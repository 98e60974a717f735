//! A backend's load, measured by the `pe` agent for the load-based policies (RFC 5356,
//! Least Used and its variants), without the backend's cooperation by default:
//!
//! - `connections` (the default): the backend's established TCP connections, counted in
//!   the kernel's socket tables (`/proc/net/tcp`, `/proc/net/tcp6`) of the agent's
//!   network namespace, over the configured capacity. It sees a backend on this host
//!   (where the agent runs); each measurement reads both tables, which costs in
//!   proportion to the host's sockets.
//! - `http:/PATH`: a GET of the path on the backend answers a number, a fraction (0.42)
//!   or a percentage (42%), as HAProxy's agent check does: one request per interval.
//! - `command:PROGRAM ARGS...`: a program (no shell) prints the number the same way: one
//!   process per interval, killed after the interval.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::config::LoadSource;

/// Longest answer read from an HTTP load endpoint or a load command.
const MAX_ANSWER: usize = 4096;

/// The backend's load as a fraction of its capacity (clamped to 0..1).
pub(crate) async fn measure(
    source: &LoadSource,
    backend: SocketAddr,
    capacity: u32,
    timeout: Duration,
) -> Result<f64, String> {
    let load = match source {
        LoadSource::Connections => {
            let count = tokio::task::spawn_blocking(move || established_connections(backend))
                .await
                .map_err(|e| e.to_string())??;
            count as f64 / f64::from(capacity.max(1))
        }
        LoadSource::Http(path) => {
            let answer = tokio::time::timeout(timeout, http_answer(backend, path))
                .await
                .map_err(|_| format!("no answer within {timeout:?}"))??;
            parse_number(&answer)?
        }
        LoadSource::Command(argv) => {
            let answer = tokio::time::timeout(timeout, command_answer(argv))
                .await
                .map_err(|_| {
                    let program = argv.first().map_or("the load command", String::as_str);
                    format!("{program} did not finish within {timeout:?}")
                })??;
            parse_number(&answer)?
        }
    };
    Ok(load.clamp(0.0, 1.0))
}

/// Established TCP connections whose local end is `backend`.
fn established_connections(backend: SocketAddr) -> Result<usize, String> {
    let mut count = 0;
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        match std::fs::read_to_string(table) {
            Ok(text) => count += count_established(&text, backend),
            // A kernel without IPv6 has no tcp6 table.
            Err(_) if table.ends_with('6') => {}
            Err(error) => return Err(format!("{table}: {error}")),
        }
    }
    Ok(count)
}

/// Counts the lines of a `/proc/net/tcp[6]` table in state ESTABLISHED (01) whose local
/// address is `backend` (an IPv4 backend also matches its IPv4-mapped IPv6 form).
fn count_established(table: &str, backend: SocketAddr) -> usize {
    table
        .lines()
        .skip(1)
        .filter(|line| {
            let mut fields = line.split_whitespace().skip(1);
            let (Some(local), Some(_remote), Some(state)) =
                (fields.next(), fields.next(), fields.next())
            else {
                return false;
            };
            state == "01"
                && parse_proc_address(local).is_some_and(|address| {
                    address.port() == backend.port()
                        && address.ip().to_canonical() == backend.ip().to_canonical()
                })
        })
        .count()
}

/// `0100007F:1F90` (IPv4) or 32 hex digits and a port (IPv6), each 32-bit word of the
/// address in the host's byte order, as the kernel prints them.
fn parse_proc_address(text: &str) -> Option<SocketAddr> {
    let (address, port) = text.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    // The kernel prints each word of the address as a number in the host's order.
    let word = |hex: &str| u32::from_str_radix(hex, 16).ok().map(u32::to_ne_bytes);
    let ip = match address.len() {
        8 => IpAddr::V4(Ipv4Addr::from(word(address)?)),
        32 => {
            let mut bytes = [0u8; 16];
            for (i, chunk) in bytes.chunks_mut(4).enumerate() {
                let hex = address.get(i * 8..i * 8 + 8)?;
                chunk.copy_from_slice(&word(hex)?);
            }
            IpAddr::V6(Ipv6Addr::from(bytes))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// A number as a load: a fraction, or a percentage with `%`.
fn parse_number(answer: &str) -> Result<f64, String> {
    let text = answer.trim();
    let (number, scale) = match text.strip_suffix('%') {
        Some(percent) => (percent.trim(), 100.0),
        None => (text, 1.0),
    };
    number
        .parse::<f64>()
        .ok()
        .filter(|value| value.is_finite() && *value >= 0.0)
        .map(|value| value / scale)
        .ok_or_else(|| {
            format!(
                "not a load: {:?}",
                text.chars().take(40).collect::<String>()
            )
        })
}

/// The body of an HTTP/1.0 GET of `path` (2xx only).
async fn http_answer(backend: SocketAddr, path: &str) -> Result<String, String> {
    let mut stream = TcpStream::connect(backend)
        .await
        .map_err(|e| e.to_string())?;
    let request = format!(
        "GET {path} HTTP/1.0\r\nHost: {backend}\r\nUser-Agent: rserpool-pe\r\nConnection: close\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut response = Vec::new();
    (&mut stream)
        .take(MAX_ANSWER as u64)
        .read_to_end(&mut response)
        .await
        .map_err(|e| e.to_string())?;
    let response = String::from_utf8_lossy(&response);
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or("no complete response head")?;
    let status = head.split_whitespace().nth(1).unwrap_or_default();
    if !status.starts_with('2') {
        return Err(format!("status {status}"));
    }
    Ok(body.to_owned())
}

/// What a program prints (it must exit with 0).
async fn command_answer(argv: &[String]) -> Result<String, String> {
    let (program, args) = argv.split_first().ok_or("no program")?;
    let output = tokio::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| format!("{program}: {e}"))?;
    if !output.status.success() {
        return Err(format!("{program} exited with {}", output.status));
    }
    let printed = output.stdout.get(..MAX_ANSWER).unwrap_or(&output.stdout);
    Ok(String::from_utf8_lossy(printed).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lines as the kernel prints them: a listener and two established connections of
    /// 127.0.0.1:8080, a client's end (remote 8080), and a connection in TIME_WAIT.
    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0 100 0 0 10 0
   1: 0100007F:1F90 0100007F:D2F0 01 00000000:00000000 00:00000000 00000000     0        0 2 1 0 20 4 30 10 -1
   2: 0100007F:1F90 0100007F:D2F2 01 00000000:00000000 00:00000000 00000000     0        0 3 1 0 20 4 30 10 -1
   3: 0100007F:D2F0 0100007F:1F90 01 00000000:00000000 00:00000000 00000000     0        0 4 1 0 20 4 30 10 -1
   4: 0100007F:1F90 0100007F:D2F4 06 00000000:00000000 03:00000000 00000000     0        0 0 3 0
";

    /// An IPv4 client of a server listening on [::]:8080 (IPv4-mapped local address).
    const TCP6: &str = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0000000000000000FFFF00000100007F:1F90 0000000000000000FFFF00000100007F:D300 01 00000000:00000000 00:00000000 00000000     0        0 5 1 0 20 4 30 10 -1
";

    #[test]
    fn established_connections_of_the_backend_are_counted_from_the_tables() {
        let backend: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        assert_eq!(count_established(TCP, backend), 2);
        assert_eq!(count_established(TCP6, backend), 1);
        assert_eq!(count_established(TCP, "127.0.0.1:8081".parse().unwrap()), 0);
        assert_eq!(
            parse_proc_address("0000000000000000FFFF00000100007F:1F90"),
            Some("[::ffff:127.0.0.1]:8080".parse().unwrap())
        );
    }

    #[test]
    fn answers_are_fractions_or_percentages() {
        assert_eq!(parse_number("0.25\n"), Ok(0.25));
        assert_eq!(parse_number(" 40% "), Ok(0.4));
        assert!(parse_number("busy").is_err());
        assert!(parse_number("-1").is_err());
    }
}
