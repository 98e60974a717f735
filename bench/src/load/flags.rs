//! Command lines of the load generators (`MODE --flag VALUE ...`), and their runtime.

use std::collections::BTreeMap;

/// The mode (the first argument) and the flags after it, by name.
pub(crate) fn flags(modes: &str) -> (String, BTreeMap<String, String>) {
    let mut args = std::env::args().skip(1);
    let mode = args.next().unwrap_or_else(|| panic!("a mode: {modes}"));
    let mut map = BTreeMap::new();
    while let Some(flag) = args.next() {
        let name = flag.strip_prefix("--").expect("--flag VALUE").to_owned();
        map.insert(name, args.next().expect("a value after the flag"));
    }
    (mode, map)
}

/// A flag's value, or `default` when it is not given (panics if neither is there).
pub(crate) fn get<T: std::str::FromStr>(
    flags: &BTreeMap<String, String>,
    name: &str,
    default: Option<T>,
) -> T
where
    T::Err: std::fmt::Debug,
{
    match flags.get(name) {
        Some(value) => value.parse().unwrap(),
        None => default.unwrap_or_else(|| panic!("give --{name}")),
    }
}

/// The generators' runtime: one worker thread (the other core is the measured
/// process's).
pub(crate) fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
}
