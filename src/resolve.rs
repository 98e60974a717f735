//! `rserpool resolve`: one handle resolution, printed for people or as JSON.

use std::fmt::Write as _;

use rserpool_proto::policy::spec;
use rserpool_proto::pool_user::{Resolution, ResolveError};
use rserpool_proto::wire::{PoolElement, PoolHandle};
use tokio_util::sync::CancellationToken;

use crate::RunError;
use crate::cli::ResolveArgs;
use crate::config;
use crate::pool_user::PoolUser;

pub(crate) async fn run(args: ResolveArgs) -> Result<String, RunError> {
    let file = crate::pool_user_settings(
        args.config.as_deref(),
        &args.registrars,
        args.transport.map(Into::into),
        &args.tls,
    )?;
    let pool_handle = PoolHandle::new(args.pool_handle.as_bytes())
        .map_err(|e| RunError::Usage(format!("pool handle {:?}: {e}", args.pool_handle)))?;
    let timeout = config::parse_duration(&args.timeout).map_err(RunError::Usage)?;
    let shutdown = CancellationToken::new();
    let tls = crate::control_tls(file.tls.as_ref(), file.pool_user.transport)?;
    let pool_user =
        PoolUser::start(&file.pool_user, tls, std::time::Duration::ZERO, &shutdown).await?;
    let result = tokio::time::timeout(timeout, pool_user.resolve(pool_handle, args.count))
        .await
        .unwrap_or(Err(ResolveError::NoRegistrar));
    shutdown.cancel();
    match result {
        Ok(resolution) if args.json => Ok(json(&resolution)),
        Ok(resolution) => Ok(text(&resolution)),
        Err(ResolveError::NoRegistrar) => Err(RunError::Unavailable(format!(
            "no registrar reachable at {}",
            file.pool_user
                .registrars
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ))),
        Err(error) => Err(RunError::Failed(format!("{pool_handle}: {error}"))),
    }
}

/// One line per PE: identifier, transport, policy, home registrar.
pub(crate) fn pool_element_line(pe: &PoolElement) -> String {
    let transport = &pe.user_transport;
    let addresses: Vec<String> = transport
        .addresses
        .iter()
        .map(ToString::to_string)
        .collect();
    let mut line = format!(
        "{}  {} {}:{}  {}",
        pe.id,
        transport.protocol.name(),
        addresses.join(","),
        transport.port,
        spec::format(&pe.policy)
    );
    if let Some(load) = spec::load_fraction(&pe.policy) {
        let _ = write!(line, " load={:.1}%", load * 100.0);
    }
    let _ = write!(line, "  home {}", pe.home_registrar);
    line
}

fn text(resolution: &Resolution) -> String {
    let mut out = format!(
        "{}: {} pool element(s){}\n",
        resolution.pool_handle,
        resolution.pool_elements.len(),
        resolution
            .pool_elements
            .first()
            .map(|pe| format!(", policy {}", spec::format(&pe.policy)))
            .unwrap_or_default()
    );
    for pe in &resolution.pool_elements {
        let _ = writeln!(out, "  {}", pool_element_line(pe));
    }
    out
}

fn json(resolution: &Resolution) -> String {
    let value = serde_json::json!({
        "pool_handle": resolution.pool_handle.to_string(),
        "policy": resolution.pool_elements.first().map(|pe| spec::format(&pe.policy)),
        "pool_elements": resolution.pool_elements,
    });
    format!("{value}\n")
}
