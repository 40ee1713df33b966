//! Which of the two engines a component runs on ([`Flavor`]), found from its exports before it
//! is compiled.

/// Which engine a component runs on. wasmtime's component-model concurrency (async functions,
/// streams, futures) is what a p3 component needs, and for a p2 component it only costs: every
/// host call goes through the async path (a guest task made and dropped per call). So p2
/// components get an engine without it, and each flavor its own linker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// `wasi:http/proxy@0.2` components: no component-model concurrency.
    P2,
    /// `wasi:http/service@0.3` components, and anything that is not a p2 component (the
    /// engine that accepts every feature gives the clearest refusal).
    P3,
}

/// The export that makes a component p2 (any 0.2 patch version).
const P2_HANDLER_EXPORT: &str = "wasi:http/incoming-handler@0.2";

impl Flavor {
    /// The engine `bytes` (a component, not yet validated) should compile on: [`Flavor::P2`]
    /// when it exports `wasi:http/incoming-handler@0.2.*`.
    pub fn of(bytes: &[u8]) -> Self {
        let mut depth = 0usize;
        for payload in wasmparser::Parser::new(0).parse_all(bytes) {
            match payload {
                Ok(wasmparser::Payload::Version { .. }) => depth += 1,
                Ok(wasmparser::Payload::End(_)) => depth = depth.saturating_sub(1),
                Ok(wasmparser::Payload::ComponentExportSection(exports)) if depth == 1 => {
                    let p2 =
                        exports.into_iter().flatten().any(|e| e.name.name.starts_with(P2_HANDLER_EXPORT));
                    if p2 {
                        return Self::P2;
                    }
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
        Self::P3
    }
}
