//! One request served by a p3 (`wasi:http/service`) component's pool of reused instances
//! ([`run_guest`]; the pool is [`crate::engine::pool`]).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::BodyExt;
use opentelemetry::trace::SpanContext;
use wasmtime_wasi_http::WasiBody;
use wasmtime_wasi_http::handler::{ExpirationError, InstantiationError, TrapOrPanicError};
use wasmtime_wasi_http::p3::bindings::http::types::ErrorCode;

use crate::engine::pool::{Caller, InstanceRecord, Pool, PoolRequest};
use crate::engine::stop::StopSignal;
use crate::serve::exchange::{Exchange, Outcome};
use crate::serve::head::{GuestResponse, decided, peek_first_frame, wait_for_fault};

/// How long a request on an instance that failed waits for the instance's error, its cause.
const INSTANCE_ERROR_WAIT: Duration = Duration::from_millis(500);

impl PoolRequest for Exchange {
    fn id(&self) -> &str {
        &self.ctx.id
    }

    fn stop(&self) -> &Arc<StopSignal> {
        &self.stop
    }

    fn on_instance(&self, instance: &Arc<InstanceRecord>) {
        self.attach_instance(instance);
    }

    fn trace_parent(&self) -> Option<SpanContext> {
        self.span_context().cloned()
    }

    fn traced(&self) -> bool {
        self.span_context().is_some()
    }

    fn instantiated(&self, took: Duration) {
        self.record_instantiation(took);
    }
}

/// Passes `req` to an instance of `pool` and waits for its response head (and first body
/// frame); faults before the head come back as the outcome to answer. The exchange owns no guest
/// task here: the pool's instance runs the guest, and stops this request's part of it when the
/// exchange's stop is reached.
pub async fn run_guest<B>(
    exchange: &Arc<Exchange>,
    pool: &Pool,
    req: Request<B>,
) -> Result<GuestResponse, Outcome>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<wasmtime_wasi_http::Error>,
{
    let req = req.map(|body| -> WasiBody { body.map_err(Into::into).boxed_unsync() });
    let handled = tokio::select! {
        biased;
        handled = pool.handle(exchange.clone() as Caller, req) => handled,
        () = wait_for_fault(exchange) => return Err(decided(exchange, Outcome::ClientGone)),
        _ = tokio::time::sleep_until(exchange.deadline) => return Err(decided(exchange, Outcome::TimedOut)),
    };
    match handled {
        Ok(response) => peek_first_frame(exchange, response).await,
        Err(error) => Err(decided(exchange, failure(exchange, &error).await)),
    }
}

/// What a request the pool could not answer ended as; the cause goes to its ERROR line.
async fn failure(exchange: &Exchange, error: &wasmtime::Error) -> Outcome {
    if error.downcast_ref::<ExpirationError>().is_some() {
        return if exchange.stop.is_deadline() { Outcome::TimedOut } else { Outcome::ClientGone };
    }
    if let Some(code) = error.downcast_ref::<ErrorCode>() {
        exchange.guest_failed(format!("the component answered with error code `{code:?}`"));
        return Outcome::ErrorCode;
    }
    exchange.serving().metrics.traps.inc();
    let cause = match error.downcast_ref::<InstantiationError<Caller>>() {
        Some(failed) => format!("the component failed to start: {:#}", failed.error),
        // Every request on an instance that failed gets this; the instance's own error follows.
        None if error.downcast_ref::<TrapOrPanicError>().is_some() => {
            let instance_error = match exchange.instance() {
                Some(instance) => instance.failure(INSTANCE_ERROR_WAIT).await,
                None => None,
            };
            match instance_error {
                Some(failure) => exchange.cause_of("the component trapped", &failure, None),
                None => exchange.cause_of("the component trapped", error, None),
            }
        }
        None => exchange.cause_of("the component trapped", error, None),
    };
    exchange.guest_failed(cause);
    Outcome::Trapped
}
