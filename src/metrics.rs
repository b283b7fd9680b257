//! Prometheus metrics: logins by mechanism and result, active sessions, login latency,
//! TLS handshake failures.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LoginLabels {
    pub mechanism: &'static str,
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolLabels {
    pub pool: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

pub struct Metrics {
    registry: Registry,
    logins: Family<LoginLabels, Counter>,
    latency: Histogram,
    active_sessions: Gauge<i64, std::sync::atomic::AtomicI64>,
    handshake_failures: Counter<u64, AtomicU64>,
    connections: Gauge<i64, std::sync::atomic::AtomicI64>,
    blocking_in_use: Family<PoolLabels, Gauge>,
    blocking_slow: Family<PoolLabels, Counter>,
    connections_cut: Family<ReasonLabels, Counter>,
    sessions_evicted: Counter<u64, AtomicU64>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("portcullis");
        let logins = Family::<LoginLabels, Counter>::default();
        registry.register(
            "logins",
            "Login attempts by mechanism and result",
            logins.clone(),
        );
        let latency = Histogram::new(exponential_buckets(0.0005, 2.0, 14));
        registry.register(
            "login_duration_seconds",
            "Time from request to login answer",
            latency.clone(),
        );
        let active_sessions = Gauge::default();
        registry.register("active_sessions", "Live sessions", active_sessions.clone());
        let handshake_failures = Counter::default();
        registry.register(
            "tls_handshake_failures",
            "TLS handshakes that failed or timed out",
            handshake_failures.clone(),
        );
        let connections = Gauge::default();
        registry.register(
            "open_connections",
            "Open client connections",
            connections.clone(),
        );
        let blocking_in_use = Family::<PoolLabels, Gauge>::default();
        registry.register(
            "blocking_in_use",
            "Slots in use per blocking-call pool (pam, nss, gssapi)",
            blocking_in_use.clone(),
        );
        let blocking_slow = Family::<PoolLabels, Counter>::default();
        registry.register(
            "blocking_slow_calls",
            "Blocking calls that held their slot longer than 5 s",
            blocking_slow.clone(),
        );
        let connections_cut = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "connections_closed_by_limit",
            "Connections the daemon closed: idle (system.idle_timeout) or over the per-address cap",
            connections_cut.clone(),
        );
        let sessions_evicted = Counter::default();
        registry.register(
            "sessions_evicted",
            "Sessions revoked because their user reached security.max_sessions_per_user",
            sessions_evicted.clone(),
        );
        for pool in ["pam", "nss", "gssapi"] {
            let _ = blocking_in_use.get_or_create(&PoolLabels { pool });
            let _ = blocking_slow.get_or_create(&PoolLabels { pool });
        }
        Metrics {
            registry,
            blocking_in_use,
            blocking_slow,
            connections_cut,
            sessions_evicted,
            logins,
            latency,
            active_sessions,
            handshake_failures,
            connections,
        }
    }

    pub fn login(&self, mechanism: &'static str, result: &'static str, seconds: f64) {
        self.logins
            .get_or_create(&LoginLabels { mechanism, result })
            .inc();
        self.latency.observe(seconds);
    }

    pub fn handshake_failed(&self) {
        self.handshake_failures.inc();
    }

    pub fn connection_opened(&self) {
        self.connections.inc();
    }

    pub fn connection_closed(&self) {
        self.connections.dec();
    }

    pub fn blocking_slot_taken(&self, pool: &'static str) {
        self.blocking_in_use
            .get_or_create(&PoolLabels { pool })
            .inc();
    }

    pub fn blocking_slot_returned(&self, pool: &'static str) {
        self.blocking_in_use
            .get_or_create(&PoolLabels { pool })
            .dec();
    }

    /// Slots in use now in each blocking pool, for `portcullis admin status`.
    pub fn blocking_in_use(&self) -> Vec<(&'static str, i64)> {
        ["pam", "nss", "gssapi"]
            .into_iter()
            .map(|pool| {
                (
                    pool,
                    self.blocking_in_use
                        .get_or_create(&PoolLabels { pool })
                        .get(),
                )
            })
            .collect()
    }

    pub fn blocking_slow(&self, pool: &'static str) {
        self.blocking_slow.get_or_create(&PoolLabels { pool }).inc();
    }

    /// `reason`: `idle` or `per_address_limit`.
    pub fn connection_cut(&self, reason: &'static str) {
        self.connections_cut
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    pub fn session_evicted(&self) {
        self.sessions_evicted.inc();
    }

    /// Text exposition format; the session gauge is read at scrape time.
    pub fn render(&self, active_sessions: usize) -> String {
        self.active_sessions.set(active_sessions as i64);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::new();
        m.login("certificate", "success", 0.002);
        let text = m.render(3);
        assert!(
            text.contains(r#"portcullis_logins_total{mechanism="certificate",result="success"} 1"#),
            "{text}"
        );
        assert!(text.contains("portcullis_active_sessions 3"), "{text}");
        assert!(
            text.contains("portcullis_login_duration_seconds_bucket"),
            "{text}"
        );
    }
}
