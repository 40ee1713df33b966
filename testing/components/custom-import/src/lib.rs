//! `custom-import`: a `wasi:http/proxy` component that also imports `wasm-echo:test/not-provided`
//! (see `wit/world.wit`), which no host provides. It exports a valid `wasi:http/incoming-handler`,
//! so the only thing wrong with it is linking: loading it, or swapping to it, must fail with the old
//! component still serving. The handler calls the import so that the import stays in the component.

use exports::wasi::http::incoming_handler::Guest;
use wasi::http::types::{Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam};

wit_bindgen::generate!({
    world: "wasm-echo:test/custom-import",
    // Later paths may depend on earlier ones: the workspace WIT brings `wasi:http/proxy` and its deps.
    path: ["../../../wit", "wit"],
    generate_all,
});

struct CustomImport;

export!(CustomImport);

impl Guest for CustomImport {
    fn handle(_request: IncomingRequest, out: ResponseOutparam) {
        let text = wasm_echo::test::not_provided::ping();
        let response = OutgoingResponse::new(Fields::new());
        let body = response.body().expect("first call to body()");
        ResponseOutparam::set(out, Ok(response));
        if let Ok(stream) = body.write() {
            let _ = stream.blocking_write_and_flush(text.as_bytes());
        }
        let _ = OutgoingBody::finish(body, None);
    }
}
