//! The PE's response as the client gets it (hop-by-hop fields gone, `Via` and the
//! session cookie added), and an upgraded connection bridged.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use http::header::HeaderValue;
use http::{Response, StatusCode, Version, header};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rserpool_proto::wire::PoolElementId;

use super::body::{ProxyBody, Tunnel};
use super::pe_stream::PeStream;
use super::routing::{LiveRoute, Routing};
use super::sticky::Binding;
use super::upstream::ResponseBody;
use super::{forward, idle, watch};

/// The PE's response as the client gets it: hop-by-hop headers gone, `Via` added, the
/// session cookie (re)issued, an upgrade bridged.
pub(super) fn finish_response(
    routing: &Routing,
    live: &LiveRoute,
    response: Response<ResponseBody>,
    client_upgrade: Option<Tunnel>,
    binding: Option<&Binding>,
    session: Option<u64>,
    pe_id: PoolElementId,
) -> Response<ProxyBody> {
    let (mut parts, body) = response.into_parts();
    let switching = parts.status == StatusCode::SWITCHING_PROTOCOLS;
    let asap_cookie = parts
        .headers
        .remove(forward::COOKIE)
        .and_then(|value| BASE64.decode(value.as_bytes()).ok());
    if let (Some(sealer), Some(session)) = (&routing.sticky, session) {
        let kept = binding.and_then(|b| b.asap_cookie.clone());
        let now = unix_seconds();
        let mut next = Binding {
            session,
            pool_handle: live.route.pool_handle,
            pe_id,
            asap_cookie: asap_cookie.or(kept),
            issued: binding.map_or(now, |b| b.issued),
            sealed: binding.map_or(now, |b| b.sealed),
        };
        // Sealed again when it changed, and when half its accepted age is gone (so an
        // active session's binding never expires; sticky.rs: the replay window).
        let reseal = binding != Some(&next) || sealer.due_for_resealing(&next, now);
        next.sealed = now;
        if reseal && let Some(value) = sealer.seal(&next) {
            let secure = if routing.https { "; Secure" } else { "" };
            let cookie = format!(
                "{}={value}; Path=/; HttpOnly; SameSite=Lax{secure}",
                sealer.name()
            );
            if let Ok(value) = HeaderValue::from_str(&cookie) {
                parts.headers.append(header::SET_COOKIE, value);
            }
        }
    }
    forward::strip_hop_by_hop(&mut parts.headers, switching);
    forward::add_via(&mut parts.headers, Version::HTTP_11);
    if switching && let Some(client_upgrade) = client_upgrade {
        if let Some(upstream) = body.into_upgraded() {
            tokio::spawn(bridge(client_upgrade, upstream));
        }
        return Response::from_parts(
            parts,
            http_body_util::Empty::new()
                .map_err(|never| match never {})
                .boxed_unsync(),
        );
    }
    let body = idle::IdleTimeout::new(body, live.route.idle_timeout).boxed_unsync();
    Response::from_parts(parts, body)
}

/// The current time as an HTTP `Date` (RFC 9110 §5.6.7).
pub(super) fn http_date() -> String {
    #[expect(
        clippy::disallowed_methods,
        reason = "a response's Date is wall-clock time"
    )]
    httpdate::fmt_http_date(std::time::SystemTime::now())
}

pub(super) fn unix_seconds() -> u64 {
    #[expect(
        clippy::disallowed_methods,
        reason = "a cookie's issue date is wall-clock time"
    )]
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
    since.map_or(0, |d| d.as_secs())
}

/// Joins the client's and the PE's upgraded connections (WebSocket and the like); the
/// PE's bytes that came with its 101 go to the client first. The tunnel ends when
/// either side does, or when it carried nothing either way for its idle timeout; its
/// connection slot is given back then.
pub(super) async fn bridge(tunnel: Tunnel, (upstream, early): (PeStream, Bytes)) {
    use tokio::io::AsyncWriteExt as _;
    let Tunnel {
        client,
        slot: _slot,
        idle_timeout,
    } = tunnel;
    let Ok(client) = client.await else {
        return;
    };
    let mut client = TokioIo::new(client);
    if client.write_all(&early).await.is_err() {
        return;
    }
    // Every byte either way passes the PE's side.
    let activity = watch::Activity::new(crate::now());
    let mut upstream = watch::Watched::new(upstream, activity.clone());
    let copy = tokio::io::copy_bidirectional(&mut client, &mut upstream);
    let mut copy = std::pin::pin!(copy);
    loop {
        let quiet_until = activity.last_byte() + idle_timeout;
        tokio::select! {
            _ = copy.as_mut() => return,
            () = tokio::time::sleep_until(quiet_until.into()) => {
                if activity.last_byte() + idle_timeout <= crate::now() {
                    metrics::counter!("rserpool_http_tunnels_idle_closed_total").increment(1);
                    return;
                }
            }
        }
    }
}

/// A short plain-text answer of the gateway's own.
pub(super) fn text(status: StatusCode, message: &str) -> Response<ProxyBody> {
    let mut response = Response::new(
        Full::new(Bytes::from(format!("{message}\n")))
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    response
}
