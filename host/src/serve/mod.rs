//! Layer 3, `serve`: the accept loop, one connection, one exchange (a request from head to last
//! byte), the request through the component, the access log and the serving metrics.

pub mod connection;
pub mod exchange;
pub mod head;
pub mod host;
pub mod metrics;
pub mod proxy;
pub mod reuse;
pub mod server;
pub mod serving;
