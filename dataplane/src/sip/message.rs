//! SIP messages (RFC 3261 §7) as the UAC needs them: parse what comes in (the headers a UAC
//! acts on, compact forms included) and write what goes out. Pure; no I/O.

/// The first line of a message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Start {
    Request { method: String, uri: String },
    Response { code: u16, reason: String },
}

/// A parsed message: the headers the UAC uses, raw values kept for echoing back.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Message {
    pub start: Option<Start>,
    pub call_id: String,
    pub cseq: u32,
    pub cseq_method: String,
    pub from: String,
    pub to: String,
    /// Every Via value in order (a header line with commas counts as several).
    pub via: Vec<String>,
    pub record_route: Vec<String>,
    pub contact: Option<String>,
    /// `WWW-Authenticate` (false) or `Proxy-Authenticate` (true) challenge.
    pub challenge: Option<(bool, String)>,
    pub retry_after: Option<String>,
    pub content_type: Option<String>,
    pub body: String,
}

/// Why a datagram is not a SIP message this UAC can use.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("not UTF-8")]
    Encoding,
    #[error("bad start line")]
    StartLine,
    #[error("missing or bad {0} header")]
    Header(&'static str),
}

impl Message {
    pub fn code(&self) -> Option<u16> {
        match &self.start {
            Some(Start::Response { code, .. }) => Some(*code),
            _ => None,
        }
    }

    pub fn method(&self) -> Option<&str> {
        match &self.start {
            Some(Start::Request { method, .. }) => Some(method),
            _ => None,
        }
    }

    /// The `tag` parameter of the To header (the far end's dialog tag).
    pub fn to_tag(&self) -> Option<&str> {
        tag_param(&self.to)
    }

    /// Parses one datagram.
    pub fn parse(bytes: &[u8]) -> Result<Message, ParseError> {
        let text = std::str::from_utf8(bytes).map_err(|_| ParseError::Encoding)?;
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((text, ""));
        let mut lines = unfold(head).into_iter();
        let first = lines.next().ok_or(ParseError::StartLine)?;
        let mut m = Message { start: Some(start_line(&first)?), body: body.to_string(), ..Message::default() };
        for line in lines {
            let Some((name, value)) = line.split_once(':') else { continue };
            m.header(name.trim(), value.trim());
        }
        if m.call_id.is_empty() {
            return Err(ParseError::Header("Call-ID"));
        }
        if m.cseq_method.is_empty() {
            return Err(ParseError::Header("CSeq"));
        }
        Ok(m)
    }

    fn header(&mut self, name: &str, value: &str) {
        let v = value.to_string();
        match name.to_ascii_lowercase().as_str() {
            "call-id" | "i" => self.call_id = v,
            "cseq" => {
                let mut it = value.split_whitespace();
                self.cseq = it.next().and_then(|n| n.parse().ok()).unwrap_or(0);
                self.cseq_method = it.next().unwrap_or("").to_string();
            }
            "from" | "f" => self.from = v,
            "to" | "t" => self.to = v,
            "via" | "v" => self.via.extend(split_commas(value)),
            "record-route" => self.record_route.extend(split_commas(value)),
            "contact" | "m" => self.contact = Some(v),
            "www-authenticate" => self.challenge = Some((false, v)),
            "proxy-authenticate" => self.challenge = Some((true, v)),
            "retry-after" => self.retry_after = Some(v),
            "content-type" | "c" => self.content_type = Some(v),
            _ => {}
        }
    }
}

/// Joins continuation lines (RFC 3261 §7.3.1) into their header.
fn unfold(head: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for line in head.split("\r\n").flat_map(|l| l.split('\n')) {
        match out.last_mut() {
            Some(last) if line.starts_with([' ', '\t']) => {
                last.push(' ');
                last.push_str(line.trim());
            }
            _ if line.is_empty() => {}
            _ => out.push(line.trim_end_matches('\r').to_string()),
        }
    }
    out
}

fn start_line(line: &str) -> Result<Start, ParseError> {
    if let Some(rest) = line.strip_prefix("SIP/2.0 ") {
        let (code, reason) = rest.split_once(' ').unwrap_or((rest, ""));
        let code: u16 = code.parse().map_err(|_| ParseError::StartLine)?;
        if !(100..700).contains(&code) {
            return Err(ParseError::StartLine);
        }
        return Ok(Start::Response { code, reason: reason.to_string() });
    }
    let mut it = line.split(' ');
    match (it.next(), it.next(), it.next()) {
        (Some(method), Some(uri), Some("SIP/2.0")) if !method.is_empty() => {
            Ok(Start::Request { method: method.to_string(), uri: uri.to_string() })
        }
        _ => Err(ParseError::StartLine),
    }
}

/// Splits a header value on the commas between its values (not those inside `<…>` or quotes).
fn split_commas(value: &str) -> Vec<String> {
    let (mut out, mut cur, mut angle, mut quote) = (Vec::new(), String::new(), false, false);
    for c in value.chars() {
        match c {
            '"' => quote = !quote,
            '<' if !quote => angle = true,
            '>' if !quote => angle = false,
            ',' if !angle && !quote => {
                out.push(cur.trim().to_string());
                cur.clear();
                continue;
            }
            _ => {}
        }
        cur.push(c);
    }
    if !cur.trim().is_empty() {
        out.push(cur.trim().to_string());
    }
    out
}

/// The `tag` parameter of a From/To value.
pub fn tag_param(v: &str) -> Option<&str> {
    let params = v.rsplit_once('>').map_or(v, |(_, p)| p);
    params.split(';').find_map(|p| p.trim().strip_prefix("tag=")).map(|t| t.trim())
}

/// The URI inside a name-addr (`"x" <sip:a@b>;p` → `sip:a@b`), or the value itself.
pub fn uri_of(v: &str) -> &str {
    match (v.find('<'), v.find('>')) {
        (Some(a), Some(b)) if a < b => &v[a + 1..b],
        _ => v.split(';').next().unwrap_or(v).trim(),
    }
}

/// Writes a message: start line, headers in order, `Content-Length`, body.
pub fn write(start: &str, headers: &[(&str, &str)], body: &str) -> Vec<u8> {
    let mut s = String::with_capacity(512 + body.len());
    s.push_str(start);
    s.push_str("\r\n");
    for (n, v) in headers {
        s.push_str(n);
        s.push_str(": ");
        s.push_str(v);
        s.push_str("\r\n");
    }
    s.push_str("Content-Length: ");
    s.push_str(&body.len().to_string());
    s.push_str("\r\n\r\n");
    s.push_str(body);
    s.into_bytes()
}

/// A response to the request `req` (its Vias, From, To, Call-ID and CSeq echoed); `to_tag` is
/// added to To when it has none (a response that creates or refuses a dialog).
pub fn response_to(
    req: &Message,
    code: u16,
    reason: &str,
    to_tag: &str,
    extra: &[(&str, &str)],
    body: &str,
) -> Vec<u8> {
    let to = if req.to_tag().is_some() { req.to.clone() } else { format!("{};tag={to_tag}", req.to) };
    let cseq = format!("{} {}", req.cseq, req.cseq_method);
    let mut h: Vec<(&str, &str)> = req.via.iter().map(|v| ("Via", v.as_str())).collect();
    h.extend([("From", req.from.as_str()), ("To", to.as_str()), ("Call-ID", req.call_id.as_str())]);
    h.push(("CSeq", cseq.as_str()));
    h.extend_from_slice(extra);
    write(&format!("SIP/2.0 {code} {reason}"), &h, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    const RINGING: &str = "SIP/2.0 180 Ringing\r\n\
        Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK1;rport=5070, SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK0\r\n\
        From: <sip:dialer@example.com>;tag=abc\r\n\
        t: <sip:+15550001@example.com>;tag=far-1\r\n\
        i: 42@host\r\n\
        CSeq: 1 INVITE\r\n\
        Record-Route: <sip:10.0.0.2;lr>,\r\n <sip:10.0.0.3;lr>\r\n\
        Contact: <sip:uas@127.0.0.1:5080>\r\n\
        Content-Length: 0\r\n\r\n";

    #[test]
    fn parses_a_response_with_compact_and_folded_headers() {
        let m = Message::parse(RINGING.as_bytes()).expect("parses");
        assert_eq!(m.code(), Some(180));
        assert_eq!((m.call_id.as_str(), m.cseq, m.cseq_method.as_str()), ("42@host", 1, "INVITE"));
        assert_eq!(m.to_tag(), Some("far-1"));
        assert_eq!(m.via.len(), 2);
        assert_eq!(m.record_route, ["<sip:10.0.0.2;lr>", "<sip:10.0.0.3;lr>"]);
        assert_eq!(m.contact.as_deref().map(uri_of), Some("sip:uas@127.0.0.1:5080"));
    }

    #[test]
    fn parses_requests_and_refuses_garbage() {
        let bye = "BYE sip:dialer@127.0.0.1:5070 SIP/2.0\r\nVia: SIP/2.0/UDP 1.2.3.4;branch=z9hG4bKx\r\n\
            From: <sip:a@b>;tag=far\r\nTo: <sip:c@d>;tag=ours\r\nCall-ID: 7\r\nCSeq: 2 BYE\r\n\r\n";
        let m = Message::parse(bye.as_bytes()).expect("parses");
        assert_eq!(m.method(), Some("BYE"));
        assert_eq!(Message::parse(b"hello"), Err(ParseError::StartLine));
        assert_eq!(Message::parse(b"SIP/2.0 200 OK\r\nCSeq: 1 INVITE\r\n\r\n"), Err(ParseError::Header("Call-ID")));
        assert_eq!(Message::parse(b"SIP/2.0 999 No\r\n\r\n"), Err(ParseError::StartLine));
        assert_eq!(Message::parse(&[0xff, 0xfe]), Err(ParseError::Encoding));
    }

    #[test]
    fn answers_echo_the_request_and_add_a_tag_only_when_missing() {
        let req = Message::parse(RINGING.replace("SIP/2.0 180 Ringing", "OPTIONS sip:x SIP/2.0").as_bytes()).unwrap();
        let resp = Message::parse(&response_to(&req, 200, "OK", "mine", &[], "")).expect("reparses");
        assert_eq!(resp.to_tag(), Some("far-1"), "a To that had a tag keeps it");
        assert_eq!((resp.via, resp.call_id, resp.cseq), (req.via.clone(), req.call_id.clone(), 1));
        let mut untagged = req.clone();
        untagged.to = "<sip:x@y>".into();
        let resp = Message::parse(&response_to(&untagged, 481, "No Dialog", "mine", &[], "")).unwrap();
        assert_eq!(resp.to_tag(), Some("mine"));
        assert!(
            String::from_utf8(response_to(&req, 200, "OK", "t", &[], "v=0\r\n"))
                .unwrap()
                .contains("Content-Length: 5\r\n")
        );
    }

    #[test]
    fn tags_and_uris() {
        assert_eq!(tag_param("\"A;B\" <sip:a@b;x=1>;tag=t1;y"), Some("t1"));
        assert_eq!(tag_param("<sip:a@b>"), None);
        assert_eq!(uri_of("sip:a@b;lr"), "sip:a@b");
        assert_eq!(uri_of("\"x\" <sip:a@b:5060>;expires=3"), "sip:a@b:5060");
    }
}
