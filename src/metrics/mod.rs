//! Metrics every fanout process serves besides its role's own: `fanout_build_info` and the
//! standard `process_*` series. Each role adds its metrics (`fanout_proxy_*`,
//! `fanout_controller_*`, `fanout_publisher_*`) to the registry [`registry`] returns; the full
//! list is in `docs/metrics.md`.

pub mod process;

use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

/// A registry holding `fanout_build_info` and the process metrics.
pub fn registry() -> Registry {
    let mut registry = Registry::default();
    registry.register(
        "fanout_build",
        "The fanout build this process runs",
        Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
    );
    registry
        .sub_registry_with_prefix("process")
        .register_collector(Box::new(process::ProcessCollector));
    registry
}

/// The registry as OpenMetrics text, as `/metrics` serves it.
pub fn encode(registry: &Registry) -> String {
    let mut text = String::new();
    // Writing into a String cannot fail; a metric that fails to encode leaves the text short.
    let _ = prometheus_client::encoding::text::encode(&mut text, registry);
    text
}

#[cfg(test)]
mod tests {
    #[test]
    fn build_info_and_process_metrics_are_served() {
        let text = super::encode(&super::registry());
        assert!(
            text.contains(&format!(
                "fanout_build_info{{version=\"{}\"}} 1",
                env!("CARGO_PKG_VERSION")
            )),
            "{text}"
        );
        for name in [
            "process_cpu_seconds_total",
            "process_resident_memory_bytes",
            "process_virtual_memory_bytes",
            "process_open_fds",
            "process_max_fds",
            "process_threads",
            "process_start_time_seconds",
        ] {
            assert!(
                text.contains(&format!("\n{name} ")),
                "{name} missing from\n{text}"
            );
        }
    }
}
