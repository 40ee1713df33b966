//! Layer 2, `versions`: the compiled versions this host holds (active, canary, history), their
//! weights, per-version request windows and metrics, and the routing pick.

pub mod cost;
pub mod latency;
pub mod metrics;
pub mod registry;
pub mod route;
pub mod weight;
pub mod window;

pub use route::{Role, Routed};
pub use weight::Weight;
