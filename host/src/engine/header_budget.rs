//! The guest's header budget ([`HeaderBudget`]): every header byte a guest builds (the `fields` it
//! fills from a list, appends to, sets or clones) counts against `--max-guest-header-bytes`, per
//! request (p2) or since a reused instance took its latest request (p3). wasi-http bounds each
//! `fields` resource on its own; this bounds their sum, so holding many resources gains nothing.
//! [`crate::engine::fields`] charges it.

/// What one entry costs on top of its bytes, as wasi-http counts it: the `HeaderName` and
/// `HeaderValue` structs the bytes live in.
pub(crate) const ENTRY_OVERHEAD: usize = size_of::<http::HeaderName>() + size_of::<http::HeaderValue>();

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
    pub(crate) fn take(&mut self, bytes: usize) -> bool {
        match self.left.checked_sub(bytes) {
            Some(left) => {
                self.left = left;
                true
            }
            None => false,
        }
    }

    /// Charges for `entries` (name, value length) pairs.
    pub(crate) fn take_entries(&mut self, entries: impl IntoIterator<Item = (usize, usize)>) -> bool {
        let cost = entries.into_iter().fold(0usize, |sum, (name, value)| {
            sum.saturating_add(name).saturating_add(value).saturating_add(ENTRY_OVERHEAD)
        });
        self.take(cost)
    }

    pub(crate) fn exceeded(&self) -> wasmtime::Error {
        wasmtime::format_err!(
            "the guest built more than `--max-guest-header-bytes` ({} bytes) of headers in one request",
            self.max
        )
    }
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
