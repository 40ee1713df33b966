//! The bump arena an instance's first allocations come from: a fixed block carved front to back,
//! with no per-allocation bookkeeping, that starts over once everything carved from it was freed.
//!
//! A fresh instance serves one request, and what a request allocates is small: taking it from
//! the arena skips the general allocator's set-up on the instance's first allocation and its
//! bins on every one after, and touches only the pages it uses. What does not fit (a large body,
//! an arena still holding a block an instance kept) goes to the general allocator, so an
//! instance that keeps something across requests wastes at most the arena, never more.
//!
//! Natively the crate does not allocate through it; the tests drive it over a plain buffer.

use core::alloc::Layout;
use core::cell::{Cell, UnsafeCell};

/// Bytes in the arena: a GET's allocations in the echo take a few KiB.
pub const ARENA_SIZE: usize = 64 * 1024;

/// The arena's bytes and how far they are carved. One thread uses it (a wasm instance has one).
#[repr(C, align(16))]
pub struct Arena {
    bytes: UnsafeCell<[u8; ARENA_SIZE]>,
    /// Offset of the first byte not yet carved.
    next: Cell<usize>,
    /// Blocks carved and not yet freed; at 0 the arena starts over.
    live: Cell<usize>,
}

// SAFETY: a wasm32 component instance runs on a single thread, the only place the global arena is
// used; the native tests each own theirs.
unsafe impl Sync for Arena {}

impl Arena {
    pub const fn new() -> Self {
        Self { bytes: UnsafeCell::new([0; ARENA_SIZE]), next: Cell::new(0), live: Cell::new(0) }
    }

    fn base(&self) -> usize {
        self.bytes.get() as usize
    }

    /// Whether `ptr` was carved from this arena.
    pub fn contains(&self, ptr: *mut u8) -> bool {
        let at = ptr as usize;
        at >= self.base() && at < self.base() + ARENA_SIZE
    }

    /// A block for `layout`, or `None` when it does not fit in what is left.
    pub fn alloc(&self, layout: Layout) -> Option<*mut u8> {
        let start = (self.base() + self.next.get()).checked_next_multiple_of(layout.align())?;
        let end = start.checked_add(layout.size())?;
        if end > self.base() + ARENA_SIZE {
            return None;
        }
        self.next.set(end - self.base());
        self.live.set(self.live.get() + 1);
        // The address of a byte inside `bytes`: derive it from the cell's pointer so that it keeps
        // the arena's provenance.
        Some(self.bytes.get().cast::<u8>().wrapping_add(start - self.base()))
    }

    /// A block carved here was freed; the last one starts the arena over.
    pub fn free(&self) {
        let live = self.live.get().saturating_sub(1);
        self.live.set(live);
        if live == 0 {
            self.next.set(0);
        }
    }

    /// Resizes the block at `ptr` (carved here, `old` bytes) where it is: a shrink always, a
    /// growth when it is the last block carved and the rest of the arena holds it.
    pub fn resize_in_place(&self, ptr: *mut u8, old: usize, new: usize) -> bool {
        let offset = ptr as usize - self.base();
        if offset + old == self.next.get() && offset + new <= ARENA_SIZE {
            self.next.set(offset + new);
            return true;
        }
        new <= old
    }
}

impl Default for Arena {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::boxed::Box;
    use std::vec::Vec;

    use super::*;

    fn layout(size: usize, align: usize) -> Layout {
        Layout::from_size_align(size, align).unwrap()
    }

    #[test]
    fn blocks_are_aligned_distinct_and_inside_the_arena() {
        let arena = Box::new(Arena::new());
        let mut blocks: Vec<(usize, usize)> = Vec::new();
        for (size, align) in [(1, 1), (7, 8), (3, 16), (100, 4), (1, 2)] {
            let ptr = arena.alloc(layout(size, align)).unwrap();
            assert!(arena.contains(ptr));
            assert_eq!(ptr as usize % align, 0, "{size} bytes aligned to {align}");
            let (start, end) = (ptr as usize, ptr as usize + size);
            assert!(blocks.iter().all(|&(s, e)| end <= s || start >= e), "overlap at {start:#x}");
            blocks.push((start, end));
        }
    }

    #[test]
    fn what_does_not_fit_is_refused_and_freeing_everything_starts_over() {
        let arena = Box::new(Arena::new());
        let first = arena.alloc(layout(ARENA_SIZE - 64, 8)).unwrap();
        assert_eq!(arena.alloc(layout(128, 8)), None, "only 64 bytes are left");
        let second = arena.alloc(layout(64, 8)).unwrap();
        assert_eq!(arena.alloc(layout(1, 1)), None, "full");
        arena.free();
        assert_eq!(arena.alloc(layout(1, 1)), None, "one block is still live: no start over");
        arena.free();
        assert_eq!(arena.alloc(layout(ARENA_SIZE, 16)), Some(first), "empty again, from the start");
        assert!(!arena.contains(second.wrapping_add(64)), "one past the end is not the arena's");
        assert!(!arena.contains(core::ptr::null_mut()));
    }

    #[test]
    fn the_last_block_grows_in_place_and_any_block_shrinks_in_place() {
        let arena = Box::new(Arena::new());
        let a = arena.alloc(layout(16, 8)).unwrap();
        assert!(arena.resize_in_place(a, 16, 64), "the last block grows");
        let b = arena.alloc(layout(8, 8)).unwrap();
        assert_eq!(b as usize, a as usize + 64, "the next block starts after the grown one");
        assert!(!arena.resize_in_place(a, 64, 128), "not the last block: cannot grow");
        assert!(arena.resize_in_place(a, 64, 32), "but can shrink");
        assert!(!arena.resize_in_place(b, 8, ARENA_SIZE), "past the arena's end");
    }
}
