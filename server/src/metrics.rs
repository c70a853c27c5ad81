//! `/metrics` in the Prometheus (OpenMetrics) text format: counters kept as requests are served,
//! and the fleet (hosts per group, version and state) counted from the database at each scrape.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

type Labels = Vec<(String, String)>;

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

pub struct Metrics {
    registry: Registry,
    checkins: Family<Labels, Counter>,
    pub grants: Counter,
    events: Family<Labels, Counter>,
    pub halts: Counter,
    latency: Family<Labels, Histogram>,
    instances: Family<Labels, Gauge>,
    update_bytes: Family<Labels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("cairn_server");
        let checkins = Family::<Labels, Counter>::default();
        registry.register("checkins", "Check-ins answered, by result (offer, none)", checkins.clone());
        let grants = Counter::default();
        registry.register("grants", "Updates granted to hosts", grants.clone());
        let events = Family::<Labels, Counter>::default();
        registry.register("events", "Events reported by hosts, by kind", events.clone());
        let halts = Counter::default();
        registry.register("halts", "Rollouts halted by failures", halts.clone());
        let latency = Family::<Labels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.000_25, 2.0, 16))
        });
        registry.register("request_duration_seconds", "HTTP request latency, by route", latency.clone());
        let instances = Family::<Labels, Gauge>::default();
        registry.register("instances", "Registered hosts, by group, version and state", instances.clone());
        let update_bytes = Family::<Labels, Counter>::default();
        registry.register(
            "update_bytes",
            "Bytes of /usr images hosts installed, by how they came (downloaded, reused from the host's own disks)",
            update_bytes.clone(),
        );
        Metrics { registry, checkins, grants, events, halts, latency, instances, update_bytes }
    }

    pub fn checkin(&self, result: &str) {
        self.checkins.get_or_create(&labels(&[("result", result)])).inc();
    }

    pub fn event(&self, kind: &str) {
        self.events.get_or_create(&labels(&[("kind", kind)])).inc();
    }

    /// What a host's install moved, summed across the fleet.
    pub fn transfer(&self, t: &cairn_release::checkin::Transfer) {
        self.update_bytes.get_or_create(&labels(&[("how", "downloaded")])).inc_by(t.downloaded);
        self.update_bytes.get_or_create(&labels(&[("how", "reused")])).inc_by(t.reused);
    }

    pub fn observe(&self, route: &str, status: u16, seconds: f64) {
        let status = status.to_string();
        self.latency.get_or_create(&labels(&[("route", route), ("status", &status)])).observe(seconds);
    }

    /// The exposition, with the fleet gauges set from `(group, version, state, hosts)`.
    pub fn render(&self, fleet: &[(String, String, String, i64)]) -> String {
        self.instances.clear();
        for (group, version, state, hosts) in fleet {
            self.instances
                .get_or_create(&labels(&[("group", group), ("version", version), ("state", state)]))
                .set(*hosts);
        }
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_histograms_and_the_fleet() {
        let m = Metrics::new();
        m.checkin("offer");
        m.checkin("none");
        m.checkin("none");
        m.grants.inc();
        m.observe("/v1/checkin", 200, 0.002);
        let t = cairn_release::checkin::Transfer { image: 100, downloaded: 7, reused: 90 };
        m.transfer(&t);
        m.transfer(&t);
        let text = m.render(&[("default".into(), "2".into(), "idle".into(), 7)]);
        assert!(text.contains("cairn_server_checkins_total{result=\"none\"} 2"), "{text}");
        assert!(text.contains("cairn_server_grants_total 1"), "{text}");
        assert!(text.contains("cairn_server_update_bytes_total{how=\"downloaded\"} 14"), "{text}");
        assert!(text.contains("cairn_server_update_bytes_total{how=\"reused\"} 180"), "{text}");
        assert!(text.contains("cairn_server_instances{group=\"default\",version=\"2\",state=\"idle\"} 7"), "{text}");
        assert!(text.contains("cairn_server_request_duration_seconds_count{route=\"/v1/checkin\",status=\"200\"} 1"));
        // A version that left the fleet is not reported as still present.
        let text = m.render(&[]);
        assert!(!text.contains("version=\"2\""), "{text}");
    }
}
