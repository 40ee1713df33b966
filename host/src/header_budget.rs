//! The guest's header budget ([`HeaderBudget`]): every header byte a guest builds (the `fields` it
//! fills from a list, appends to, sets or clones) counts against `--max-guest-header-bytes`, per
//! request (p2) or since a reused instance took its latest request (p3). wasi-http bounds each
//! `fields` resource on its own; this bounds their sum, so holding many resources gains nothing.
//!
//! The budget wraps wasi-http's own `fields` functions in the linker (shadowing them): each
//! charges the bytes it would add, then calls wasi-http's implementation. Past the budget a p2
//! guest traps (as wasi-http p2 does past its per-`fields` limit) and a p3 guest gets
//! `header-error.size-exceeded`.

use anyhow::Context;
use wasmtime::StoreContextMut;
use wasmtime::component::{Linker, Resource};
use wasmtime_wasi_http::{FieldMap, WasiHttpView};

use crate::runtime::RequestState;

/// wasi:http 0.2 as wasmtime's wasi-http links it (older 0.2 imports resolve to it).
const P2_TYPES: &str = "wasi:http/types@0.2.12";
/// wasi:http 0.3 as wasmtime's wasi-http links it.
const P3_TYPES: &str = "wasi:http/types@0.3.0";

/// What one entry costs on top of its bytes, as wasi-http counts it: the `HeaderName` and
/// `HeaderValue` structs the bytes live in.
const ENTRY_OVERHEAD: usize = size_of::<http::HeaderName>() + size_of::<http::HeaderValue>();

/// Header bytes one store's guest may still build.
#[derive(Debug)]
pub struct HeaderBudget {
    max: usize,
    left: usize,
}

impl HeaderBudget {
    pub fn new(max: usize) -> Self {
        Self { max, left: max }
    }

    /// A reused (p3) instance takes a new request: the full budget again.
    pub fn refill(&mut self) {
        self.left = self.max;
    }

    /// Takes `bytes`, or leaves the budget as it is and says no.
    fn take(&mut self, bytes: usize) -> bool {
        match self.left.checked_sub(bytes) {
            Some(left) => {
                self.left = left;
                true
            }
            None => false,
        }
    }

    /// Charges for `entries` (name, value length) pairs.
    fn take_entries(&mut self, entries: impl IntoIterator<Item = (usize, usize)>) -> bool {
        let cost = entries.into_iter().fold(0usize, |sum, (name, value)| {
            sum.saturating_add(name).saturating_add(value).saturating_add(ENTRY_OVERHEAD)
        });
        self.take(cost)
    }

    fn exceeded(&self) -> wasmtime::Error {
        wasmtime::format_err!(
            "the guest built more than `--max-guest-header-bytes` ({} bytes) of headers in one request",
            self.max
        )
    }
}

/// What a clone of `fields` costs: all of its entries.
fn clone_cost(state: &mut RequestState, fields: &Resource<FieldMap>) -> wasmtime::Result<usize> {
    let http = state.http();
    let map = http.table.get(fields)?;
    Ok(map.iter().fold(0usize, |sum, (name, value)| {
        sum.saturating_add(name.as_str().len() + value.len() + ENTRY_OVERHEAD)
    }))
}

/// Replaces the `fields` functions of both wasi:http worlds with budgeted ones. Call after
/// wasi-http's own `add_to_linker`s.
pub fn add_to_linker(linker: &mut Linker<RequestState>) -> anyhow::Result<()> {
    linker.allow_shadowing(true);
    let result = add_p2(linker).and_then(|()| add_p3(linker));
    linker.allow_shadowing(false);
    result.map_err(anyhow::Error::from).context("failed to add the guest header budget to the linker")
}

fn add_p2(linker: &mut Linker<RequestState>) -> wasmtime::Result<()> {
    use wasmtime_wasi_http::p2::bindings::http::types::{HeaderError, Host, HostFields};
    type Store<'a> = StoreContextMut<'a, RequestState>;

    let mut types = linker.instance(P2_TYPES)?;
    types.func_wrap(
        "[static]fields.from-list",
        |mut store: Store<'_>, (entries,): (Vec<(String, Vec<u8>)>,)| {
            let state = store.data_mut();
            if !state.header_budget().take_entries(entries.iter().map(|(n, v)| (n.len(), v.len()))) {
                return Err(state.header_budget().exceeded());
            }
            let mut http = state.http();
            match HostFields::from_list(&mut http, entries) {
                Ok(fields) => Ok((Ok::<_, HeaderError>(fields),)),
                Err(error) => Ok((Err(http.convert_header_error(error)?),)),
            }
        },
    )?;
    types.func_wrap(
        "[method]fields.set",
        |mut store: Store<'_>, (fields, name, values): (Resource<FieldMap>, String, Vec<Vec<u8>>)| {
            let state = store.data_mut();
            if !state.header_budget().take_entries(values.iter().map(|v| (name.len(), v.len()))) {
                return Err(state.header_budget().exceeded());
            }
            let mut http = state.http();
            match HostFields::set(&mut http, fields, name, values) {
                Ok(()) => Ok((Ok::<_, HeaderError>(()),)),
                Err(error) => Ok((Err(http.convert_header_error(error)?),)),
            }
        },
    )?;
    types.func_wrap(
        "[method]fields.append",
        |mut store: Store<'_>, (fields, name, value): (Resource<FieldMap>, String, Vec<u8>)| {
            let state = store.data_mut();
            if !state.header_budget().take_entries([(name.len(), value.len())]) {
                return Err(state.header_budget().exceeded());
            }
            let mut http = state.http();
            match HostFields::append(&mut http, fields, name, value) {
                Ok(()) => Ok((Ok::<_, HeaderError>(()),)),
                Err(error) => Ok((Err(http.convert_header_error(error)?),)),
            }
        },
    )?;
    types.func_wrap("[method]fields.clone", |mut store: Store<'_>, (fields,): (Resource<FieldMap>,)| {
        let state = store.data_mut();
        let cost = clone_cost(state, &fields)?;
        if !state.header_budget().take(cost) {
            return Err(state.header_budget().exceeded());
        }
        Ok((HostFields::clone(&mut state.http(), fields)?,))
    })?;
    Ok(())
}

fn add_p3(linker: &mut Linker<RequestState>) -> wasmtime::Result<()> {
    use wasmtime_wasi_http::p3::bindings::http::types::{HeaderError, Host, HostFields};
    type Store<'a> = StoreContextMut<'a, RequestState>;

    let mut types = linker.instance(P3_TYPES)?;
    types.func_wrap(
        "[static]fields.from-list",
        |mut store: Store<'_>, (entries,): (Vec<(String, Vec<u8>)>,)| {
            let state = store.data_mut();
            if !state.header_budget().take_entries(entries.iter().map(|(n, v)| (n.len(), v.len()))) {
                return Ok((Err(HeaderError::SizeExceeded),));
            }
            let mut http = state.http();
            match HostFields::from_list(&mut http, entries) {
                Ok(fields) => Ok((Ok(fields),)),
                Err(error) => Ok((Err(http.convert_header_error(error)?),)),
            }
        },
    )?;
    types.func_wrap(
        "[method]fields.set",
        |mut store: Store<'_>, (fields, name, values): (Resource<FieldMap>, String, Vec<Vec<u8>>)| {
            let state = store.data_mut();
            if !state.header_budget().take_entries(values.iter().map(|v| (name.len(), v.len()))) {
                return Ok((Err(HeaderError::SizeExceeded),));
            }
            let mut http = state.http();
            match HostFields::set(&mut http, fields, name, values) {
                Ok(()) => Ok((Ok(()),)),
                Err(error) => Ok((Err(http.convert_header_error(error)?),)),
            }
        },
    )?;
    types.func_wrap(
        "[method]fields.append",
        |mut store: Store<'_>, (fields, name, value): (Resource<FieldMap>, String, Vec<u8>)| {
            let state = store.data_mut();
            if !state.header_budget().take_entries([(name.len(), value.len())]) {
                return Ok((Err(HeaderError::SizeExceeded),));
            }
            let mut http = state.http();
            match HostFields::append(&mut http, fields, name, value) {
                Ok(()) => Ok((Ok(()),)),
                Err(error) => Ok((Err(http.convert_header_error(error)?),)),
            }
        },
    )?;
    // `clone` has no error result in 0.3: past the budget, a trap.
    types.func_wrap("[method]fields.clone", |mut store: Store<'_>, (fields,): (Resource<FieldMap>,)| {
        let state = store.data_mut();
        let cost = clone_cost(state, &fields)?;
        if !state.header_budget().take(cost) {
            return Err(state.header_budget().exceeded());
        }
        Ok((HostFields::clone(&mut state.http(), fields)?,))
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_is_spent_by_entries_and_refilled() {
        let mut budget = HeaderBudget::new(2 * (10 + ENTRY_OVERHEAD));
        assert!(budget.take_entries([(5, 5)]));
        assert!(budget.take_entries([(4, 6)]));
        assert!(!budget.take_entries([(0, 0)]), "every entry costs at least its overhead");
        assert_eq!(budget.left, 0);
        budget.refill();
        assert!(!budget.take_entries([(5, 5), (5, 5), (5, 5)]), "a refused call takes nothing");
        assert_eq!(budget.left, budget.max);
        assert!(!budget.take_entries([(usize::MAX, 1)]), "no overflow");
    }
}
