//! A webhook receiver for conformance work: `signpost conformance receiver` acts as a charity's
//! endpoint (it verifies each request's Standard Webhooks signature with the Endpoint's secret and
//! reports what it got), and the kit's own webhook scenario listens with it.

use std::time::Duration;

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use tokio::sync::{mpsc, oneshot};

use crate::delivery::signature;

/// One request the receiver got.
#[derive(Debug, Clone)]
pub struct Received {
    pub headers: http::HeaderMap,
    pub body: String,
    /// With a secret: whether it verified (and why not).
    pub verified: Option<Result<(), String>>,
}

struct State {
    secret: Option<String>,
    inbox: mpsc::UnboundedSender<Received>,
}

async fn hook(req: HttpRequest, body: web::Bytes, state: web::Data<State>) -> HttpResponse {
    let headers = signature::http_headers(req.headers());
    let verified = state.secret.as_ref().map(|s| signature::verify_headers(s, &headers, &body));
    let refused = matches!(verified, Some(Err(_)));
    let _ = state.inbox.send(Received { headers, body: String::from_utf8_lossy(&body).into_owned(), verified });
    if refused { HttpResponse::Unauthorized().finish() } else { HttpResponse::NoContent().finish() }
}

/// Listen on `host:port` (0 = any free port) at any path; returns the port, the requests as they
/// come, and a sender that stops the server. With `secret`, unverified requests get 401.
pub async fn listen(
    host: &str,
    port: u16,
    secret: Option<String>,
) -> std::io::Result<(u16, mpsc::UnboundedReceiver<Received>, oneshot::Sender<()>)> {
    let (tx, rx) = mpsc::unbounded_channel();
    let state = web::Data::new(State { secret, inbox: tx });
    let listener = std::net::TcpListener::bind((host, port))?;
    let port = listener.local_addr()?.port();
    let server = HttpServer::new(move || App::new().app_data(state.clone()).default_service(web::post().to(hook)))
        .workers(1)
        .disable_signals()
        .shutdown_timeout(1)
        .listen(listener)?
        .run();
    let handle = server.handle();
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(server);
    tokio::spawn(async move {
        let _ = stopped.await;
        handle.stop(false).await;
    });
    Ok((port, rx, stop))
}

/// `signpost conformance receiver`: print one line per request until `count` verified events
/// (or for ever); returns (verified, refused).
pub async fn run(port: u16, secret: String, count: Option<usize>) -> anyhow::Result<(usize, usize)> {
    signature::verify_headers(&secret, &http::HeaderMap::new(), b"")
        .err()
        .filter(|e| e.contains("secret"))
        .map_or(Ok(()), |e| Err(anyhow::anyhow!("--secret: {e}")))?;
    let (port, mut inbox, _stop) = listen("127.0.0.1", port, Some(secret)).await?;
    println!("listening on http://127.0.0.1:{port}/ (any path); point the Endpoint's address there");
    let (mut ok, mut bad) = (0, 0);
    while let Some(got) = inbox.recv().await {
        let id = got.headers.get("webhook-id").and_then(|v| v.to_str().ok()).unwrap_or("-").to_string();
        let event: serde_json::Value = serde_json::from_str(&got.body).unwrap_or_default();
        let what = format!(
            "{} {} eventNumber {}",
            event["type"].as_str().unwrap_or("?"),
            event.pointer("/data/task").and_then(|v| v.as_str()).unwrap_or("-"),
            event.pointer("/data/eventNumber").map(|v| v.to_string()).unwrap_or_else(|| "-".into())
        );
        match got.verified {
            Some(Ok(())) => {
                ok += 1;
                println!("verified  {id} {what}");
            }
            Some(Err(why)) => {
                bad += 1;
                println!("REFUSED   {id} {what}: {why}");
            }
            None => {}
        }
        if count.is_some_and(|c| ok >= c) {
            break;
        }
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    println!("{ok} verified, {bad} refused");
    Ok((ok, bad))
}
