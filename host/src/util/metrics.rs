//! Counters kept per process rather than per server (the log writer's, the guest output's), read
//! at each scrape: they are counted where no layer's metrics are at hand.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::registry::Registry;

/// Registers the process-wide counter `name`, read from `read` at each scrape.
pub fn register_process_counter(
    registry: &mut Registry,
    name: &'static str,
    help: &'static str,
    read: fn() -> u64,
) {
    registry.register_collector(Box::new(ProcessCounter { name, help, read }));
}

#[derive(Debug)]
struct ProcessCounter {
    name: &'static str,
    help: &'static str,
    read: fn() -> u64,
}

impl Collector for ProcessCounter {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let counter = ConstCounter::new((self.read)());
        let metric = encoder.encode_descriptor(self.name, self.help, None, counter.metric_type())?;
        counter.encode(metric)
    }
}
