//! Layer 4, `release`: how a version becomes live: the validation gate, the sources candidates come
//! from, the fleet's release store on Cloud Storage, and the rollout (canary analysis, automatic
//! rollback, steps).

pub mod gate;
pub mod metrics;
pub mod rollout;
pub mod source;
pub mod store;
