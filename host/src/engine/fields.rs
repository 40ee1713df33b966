//! wasi-http's `fields` functions with the guest's header budget: the budget wraps them in the
//! linker (shadowing them), each charging the bytes it would add to the request's
//! [`HeaderBudget`] before it calls wasi-http's implementation. Past the budget a p2 guest traps
//! (as wasi-http p2 does past its per-`fields` limit) and a p3 guest gets
//! `header-error.size-exceeded`.

use anyhow::Context;
use wasmtime::StoreContextMut;
use wasmtime::component::{Linker, Resource};
use wasmtime_wasi_http::{FieldMap, WasiHttpView};

use crate::engine::flavor::Flavor;
use crate::engine::header_budget::ENTRY_OVERHEAD;
use crate::engine::state::RequestState;

/// wasi:http 0.2 as wasmtime's wasi-http links it (older 0.2 imports resolve to it).
const P2_TYPES: &str = "wasi:http/types@0.2.12";
/// wasi:http 0.3 as wasmtime's wasi-http links it.
const P3_TYPES: &str = "wasi:http/types@0.3.0";

/// What a clone of `fields` costs: all of its entries.
fn clone_cost(state: &mut RequestState, fields: &Resource<FieldMap>) -> wasmtime::Result<usize> {
    let http = state.http();
    let map = http.table.get(fields)?;
    Ok(map.iter().fold(0usize, |sum, (name, value)| {
        sum.saturating_add(name.as_str().len() + value.len() + ENTRY_OVERHEAD)
    }))
}

/// Replaces the `fields` functions of `flavor`'s wasi:http worlds with budgeted ones. Call after
/// wasi-http's own `add_to_linker`s.
pub fn add_to_linker(linker: &mut Linker<RequestState>, flavor: Flavor) -> anyhow::Result<()> {
    linker.allow_shadowing(true);
    let result = match flavor {
        Flavor::P2 => add_p2(linker),
        Flavor::P3 => add_p2(linker).and_then(|()| add_p3(linker)),
    };
    linker.allow_shadowing(false);
    result.map_err(anyhow::Error::from).context("failed to add the guest header budget to the linker")
}

/// Wraps one world's `fields.from-list`, `set`, `append` and `clone` (`$types`: that world's
/// bindings) with the budget: each charges what it adds first; past the budget, `$over` is what
/// the call returns (`clone`, which has no error result, traps).
macro_rules! add_budgeted {
    ($linker:expr, $instance:expr, $($types:ident)::+, |$state:ident| $over:expr) => {{
        use $($types)::+::{HeaderError, Host, HostFields};
        type Store<'a> = StoreContextMut<'a, RequestState>;

        let mut types = $linker.instance($instance)?;
        types.func_wrap(
            "[static]fields.from-list",
            |mut store: Store<'_>, (entries,): (Vec<(String, Vec<u8>)>,)| {
                let $state = store.data_mut();
                if !$state.header_budget().take_entries(entries.iter().map(|(n, v)| (n.len(), v.len()))) {
                    return $over;
                }
                let mut http = $state.http();
                match HostFields::from_list(&mut http, entries) {
                    Ok(fields) => Ok((Ok::<_, HeaderError>(fields),)),
                    Err(error) => Ok((Err(http.convert_header_error(error)?),)),
                }
            },
        )?;
        types.func_wrap(
            "[method]fields.set",
            |mut store: Store<'_>, (fields, name, values): (Resource<FieldMap>, String, Vec<Vec<u8>>)| {
                let $state = store.data_mut();
                if !$state.header_budget().take_entries(values.iter().map(|v| (name.len(), v.len()))) {
                    return $over;
                }
                let mut http = $state.http();
                match HostFields::set(&mut http, fields, name, values) {
                    Ok(()) => Ok((Ok::<_, HeaderError>(()),)),
                    Err(error) => Ok((Err(http.convert_header_error(error)?),)),
                }
            },
        )?;
        types.func_wrap(
            "[method]fields.append",
            |mut store: Store<'_>, (fields, name, value): (Resource<FieldMap>, String, Vec<u8>)| {
                let $state = store.data_mut();
                if !$state.header_budget().take_entries([(name.len(), value.len())]) {
                    return $over;
                }
                let mut http = $state.http();
                match HostFields::append(&mut http, fields, name, value) {
                    Ok(()) => Ok((Ok::<_, HeaderError>(()),)),
                    Err(error) => Ok((Err(http.convert_header_error(error)?),)),
                }
            },
        )?;
        types.func_wrap("[method]fields.clone", |mut store: Store<'_>, (fields,): (Resource<FieldMap>,)| {
            let $state = store.data_mut();
            let cost = clone_cost($state, &fields)?;
            if !$state.header_budget().take(cost) {
                // `clone` has no error result in 0.3 either: past the budget, a trap.
                return Err($state.header_budget().exceeded());
            }
            Ok((HostFields::clone(&mut $state.http(), fields)?,))
        })?;
        Ok(())
    }};
}

/// wasi:http 0.2: past the budget the guest traps, as wasi-http does past its per-`fields` limit.
fn add_p2(linker: &mut Linker<RequestState>) -> wasmtime::Result<()> {
    add_budgeted!(linker, P2_TYPES, wasmtime_wasi_http::p2::bindings::http::types, |state| {
        Err(state.header_budget().exceeded())
    })
}

/// wasi:http 0.3: past the budget the call answers `header-error.size-exceeded`.
fn add_p3(linker: &mut Linker<RequestState>) -> wasmtime::Result<()> {
    add_budgeted!(linker, P3_TYPES, wasmtime_wasi_http::p3::bindings::http::types, |state| {
        Ok((Err(HeaderError::SizeExceeded),))
    })
}
