//! Counters kept per process rather than per server (the log writer's, the guest output's), read
//! at each scrape: they are counted where no layer's metrics are at hand. And counter families
//! listed in a fixed order ([`register_counter_family`]), so that `/metrics` reads the same at
//! every scrape.

use std::fmt::Debug;
use std::hash::Hash;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
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

/// Registers `family` as one counter family `name` (one `# HELP`, one `# TYPE`), its series
/// listed in the order of `order`, each created now so that it reads 0 before its first count.
/// A [`Family`] registered as it is lists its series in hash order, which changes from one
/// process to the next. `help` gets the full stop that [`Registry::register`] adds.
pub fn register_counter_family<L>(
    registry: &mut Registry,
    name: &'static str,
    help: &'static str,
    family: Family<L, Counter>,
    order: &'static [L],
) where
    L: EncodeLabelSet + Clone + Hash + Eq + Debug + Send + Sync + 'static,
{
    for labels in order {
        drop(family.get_or_create(labels));
    }
    registry.register_collector(Box::new(OrderedFamily { name, help: format!("{help}."), family, order }));
}

#[derive(Debug)]
struct OrderedFamily<L: 'static> {
    name: &'static str,
    help: String,
    family: Family<L, Counter>,
    order: &'static [L],
}

impl<L> Collector for OrderedFamily<L>
where
    L: EncodeLabelSet + Clone + Hash + Eq + Debug + Send + Sync + 'static,
{
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut metric = encoder.encode_descriptor(self.name, &self.help, None, MetricType::Counter)?;
        for labels in self.order {
            if let Some(counter) = self.family.get(labels) {
                counter.encode(metric.encode_family(labels)?)?;
            }
        }
        Ok(())
    }
}
