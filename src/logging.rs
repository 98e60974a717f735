//! Structured logs (tracing): text or JSON lines on standard error, with a filter that a
//! configuration reload can change at runtime.

use std::io::IsTerminal as _;

use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Registry, fmt, reload};

use crate::config::LogFormat;

/// Moved below the gateways (they hold peers' warnings to a rate too).
pub(crate) use rserpool_gateways::logs::RateLimitedLog;

/// Changes the log filter of the running process.
#[derive(Debug, Clone)]
pub(crate) struct Logging {
    filter: reload::Handle<EnvFilter, Registry>,
    /// The filter as given (for the admin listener's `GET /log`).
    level: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Logging {
    /// Installs the global subscriber. Called once per process.
    pub(crate) fn init(level: &str, format: LogFormat) -> Result<Self, String> {
        let filter = filter(level)?;
        let (filter, handle) = reload::Layer::new(filter);
        let json = format == LogFormat::Json;
        let ansi = std::io::stderr().is_terminal();
        tracing_subscriber::registry()
            .with(filter)
            .with(json.then(|| fmt::layer().json().with_writer(std::io::stderr)))
            .with((!json).then(|| fmt::layer().with_ansi(ansi).with_writer(std::io::stderr)))
            .try_init()
            .map_err(|e| format!("cannot install the logger: {e}"))?;
        Ok(Self {
            filter: handle,
            level: std::sync::Arc::new(std::sync::Mutex::new(level.to_owned())),
        })
    }

    /// Replaces the filter (configuration reload).
    pub(crate) fn set_level(&self, level: &str) -> Result<(), String> {
        let filter = filter(level)?;
        self.filter.reload(filter).map_err(|e| e.to_string())?;
        if let Ok(mut current) = self.level.lock() {
            level.clone_into(&mut current);
        }
        Ok(())
    }

    /// The filter in use.
    pub(crate) fn level(&self) -> String {
        self.level.lock().map(|l| l.clone()).unwrap_or_default()
    }
}

/// The filter for `level`. The DNS server library logs every query at info; unless the
/// level names it, it logs warnings only (the gateway counts queries in its metrics).
fn filter(level: &str) -> Result<EnvFilter, String> {
    let full = if level.contains("hickory") {
        level.to_owned()
    } else {
        format!("{level},hickory_server=warn,hickory_proto=warn,hickory_net=warn")
    };
    EnvFilter::try_new(&full).map_err(|e| format!("log level {level:?}: {e}"))
}

/// SIGHUP's first step in every role: `load` reads the configuration again, off the
/// event loop (it reads files and may resolve host names), and its log level is applied;
/// `None`, and the reason logged, when it does not load (the running configuration then
/// stays whole).
pub(crate) async fn reread<T: Send + 'static>(
    load: impl FnOnce() -> Result<(crate::config::ConfigFile, T), crate::RunError> + Send + 'static,
    logging: &Logging,
) -> Option<(crate::config::ConfigFile, T)> {
    let loaded = tokio::task::spawn_blocking(load)
        .await
        .unwrap_or_else(|error| Err(crate::RunError::Failed(error.to_string())));
    match loaded {
        Ok((file, extra)) => {
            if let Err(error) = logging.set_level(&file.log.level) {
                tracing::error!(%error, "SIGHUP: log level not changed");
            }
            Some((file, extra))
        }
        Err(error) => {
            tracing::error!(%error, "SIGHUP: configuration not reloaded (reload failed); the running one stays");
            None
        }
    }
}
