//! `local-receiver`: a webhook receiver for the demo. Listens on 127.0.0.1 (HTTP), answers 200,
//! and writes every request as one JSON line (method, path, content type, body) to stdout.
//! Prints its base URL on stderr first. Runs until killed.

use std::io::Write;
use std::time::Duration;

use testkit::receiver::{Receiver, Reply};

fn main() {
    let receiver = Receiver::http(Reply::Status(200));
    eprintln!("local-receiver: listening on {}", receiver.url(""));
    let mut seen = 0;
    loop {
        receiver.wait_for(seen + 1, Duration::from_secs(3600));
        let requests = receiver.requests();
        let mut out = std::io::stdout().lock();
        for req in requests.iter().skip(seen) {
            let body: serde_json::Value = req
                .json()
                .unwrap_or_else(|_| String::from_utf8_lossy(&req.body).into_owned().into());
            let line = serde_json::json!({
                "method": req.method,
                "path": req.path,
                "contentType": req.header("content-type"),
                "body": body,
            });
            let _ = writeln!(out, "{line}");
        }
        let _ = out.flush();
        seen = requests.len();
    }
}
