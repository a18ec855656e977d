//! What a tunnel carries, judged from its first bytes. Pure, no IO.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// A TLS record carrying a handshake (a ClientHello).
    Tls,
    /// An HTTP/1.x request line.
    Http1,
    /// The HTTP/2 connection preface.
    Http2,
    /// Anything else: relayed as opaque bytes.
    Opaque,
}

/// The longest method token we wait for before calling the stream opaque.
const MAX_METHOD_LEN: usize = 16;
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Classifies the first bytes of a stream; `None` means "read more first".
pub fn sniff(buf: &[u8]) -> Option<Protocol> {
    let first = *buf.first()?;
    if first == 0x16 {
        // Content type handshake, then major version 3 and a minor version TLS uses.
        return match buf.get(1..3) {
            None if buf.len() == 2 && buf[1] != 0x03 => Some(Protocol::Opaque),
            None => None,
            Some([0x03, minor]) if *minor <= 0x04 => Some(Protocol::Tls),
            Some(_) => Some(Protocol::Opaque),
        };
    }
    let common = buf.len().min(H2_PREFACE.len());
    if buf[..common] == H2_PREFACE[..common] {
        return if common == H2_PREFACE.len() { Some(Protocol::Http2) } else { None };
    }
    // An HTTP/1 request line starts with an uppercase method token and a space.
    for (i, &b) in buf.iter().enumerate().take(MAX_METHOD_LEN + 1) {
        match b {
            b'A'..=b'Z' | b'-' | b'_' => continue,
            b' ' if i > 0 => return Some(Protocol::Http1),
            _ => return Some(Protocol::Opaque),
        }
    }
    if buf.len() > MAX_METHOD_LEN {
        Some(Protocol::Opaque)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_client_hello() {
        assert_eq!(sniff(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01]), Some(Protocol::Tls));
        assert_eq!(sniff(&[0x16, 0x03, 0x03]), Some(Protocol::Tls));
        // Split across reads: wait for the version bytes.
        assert_eq!(sniff(&[0x16]), None);
        assert_eq!(sniff(&[0x16, 0x03]), None);
        // Not a TLS version: opaque.
        assert_eq!(sniff(&[0x16, 0x02]), Some(Protocol::Opaque));
        assert_eq!(sniff(&[0x16, 0x03, 0x09]), Some(Protocol::Opaque));
    }

    #[test]
    fn http_request_lines() {
        assert_eq!(sniff(b"GET / HTTP/1.1\r\n"), Some(Protocol::Http1));
        assert_eq!(sniff(b"OPTIONS * HTTP/1.1\r\n"), Some(Protocol::Http1));
        assert_eq!(sniff(b"GE"), None);
        assert_eq!(sniff(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"), Some(Protocol::Http2));
        assert_eq!(sniff(b"PRI * HTTP/2"), None);
        assert_eq!(sniff(b"PRI / HTTP/1.1\r\n"), Some(Protocol::Http1));
    }

    #[test]
    fn anything_else_is_opaque() {
        assert_eq!(sniff(b""), None);
        assert_eq!(sniff(b"get / HTTP/1.1"), Some(Protocol::Opaque));
        assert_eq!(sniff(b" GET"), Some(Protocol::Opaque));
        assert_eq!(sniff(b"SSH-2.0-OpenSSH"), Some(Protocol::Opaque));
        assert_eq!(sniff(b"AAAAAAAAAAAAAAAAAAAAAAAA"), Some(Protocol::Opaque));
        assert_eq!(sniff(&[0x00, 0x01]), Some(Protocol::Opaque));
    }
}
