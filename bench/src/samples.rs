//! Every number the benchmark measured, one value per round, keyed by metric and server; tables
//! show the median of the rounds.

use std::collections::BTreeMap;

#[derive(Debug, Default, Clone)]
pub struct Samples {
    values: BTreeMap<(String, String), Vec<f64>>,
}

impl Samples {
    pub fn add(&mut self, metric: &str, server: &str, value: f64) {
        self.values.entry((metric.to_string(), server.to_string())).or_default().push(value);
    }

    pub fn get(&self, metric: &str, server: &str) -> Option<&[f64]> {
        self.values.get(&(metric.to_string(), server.to_string())).map(Vec::as_slice)
    }

    /// The median of the rounds (NaN-free values only).
    pub fn median(&self, metric: &str, server: &str) -> Option<f64> {
        median(self.get(metric, server)?)
    }

    pub fn sum(&self, metric: &str, server: &str) -> Option<f64> {
        self.get(metric, server).map(|v| v.iter().sum())
    }

    /// `{"metric": {"server": [round values]}}`.
    pub fn to_json(&self) -> serde_json::Value {
        let mut out = serde_json::Map::new();
        for ((metric, server), values) in &self.values {
            let entry = out.entry(metric.clone()).or_insert_with(|| serde_json::json!({}));
            entry[server] = serde_json::json!(values);
        }
        serde_json::Value::Object(out)
    }
}

pub fn median(values: &[f64]) -> Option<f64> {
    let mut finite: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    if finite.is_empty() {
        return None;
    }
    finite.sort_by(f64::total_cmp);
    let mid = finite.len() / 2;
    Some(if finite.len() % 2 == 1 { finite[mid] } else { (finite[mid - 1] + finite[mid]) / 2.0 })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&[f64::NAN, 5.0]), Some(5.0));
        assert_eq!(median(&[]), None);
    }

    #[test]
    fn keyed_by_metric_and_server() {
        let mut samples = Samples::default();
        samples.add("get.rps", "a", 1.0);
        samples.add("get.rps", "a", 3.0);
        samples.add("get.rps", "a", 2.0);
        assert_eq!(samples.median("get.rps", "a"), Some(2.0));
        assert_eq!(samples.median("get.rps", "b"), None);
        assert_eq!(samples.to_json()["get.rps"]["a"], serde_json::json!([1.0, 3.0, 2.0]));
    }
}
