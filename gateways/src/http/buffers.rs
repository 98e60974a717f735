//! A thread's spare connection buffers, as HAProxy keeps buffer pools: an HTTP/1.1
//! connection on a plain socket gives its read and write buffers back while it waits
//! for its next request and takes one again when data comes, so an idle keep-alive
//! connection holds none (each held 16 KiB before: `bench/sessions.sh`), and a busy one
//! costs a push and a pop per request rather than two allocations.

use std::cell::RefCell;

use bytes::BytesMut;

/// The size of a connection buffer.
pub(super) const SIZE: usize = 8 * 1024;
/// Spare buffers a thread keeps at most (512 KiB); beyond, given-back ones are freed.
/// A thread serves far fewer requests at once than it holds idle connections, and a
/// buffer allocated when none is spare costs one allocation.
const KEPT: usize = 64;

thread_local! {
    static SPARE: RefCell<Vec<BytesMut>> = const { RefCell::new(Vec::new()) };
}

/// An empty buffer of at least [`SIZE`] bytes.
pub(super) fn take() -> BytesMut {
    SPARE
        .with_borrow_mut(Vec::pop)
        .unwrap_or_else(|| BytesMut::with_capacity(SIZE))
}

/// Gives `buffer` back (it is left without one); kept if it is a plain one of the usual
/// size, so that a buffer grown for a large head is not hoarded.
pub(super) fn give_back(buffer: &mut BytesMut) {
    let mut spare = std::mem::take(buffer);
    if !(SIZE..=2 * SIZE).contains(&spare.capacity()) {
        return;
    }
    spare.clear();
    SPARE.with_borrow_mut(|kept| {
        if kept.len() < KEPT {
            kept.push(spare);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spare() -> usize {
        SPARE.with_borrow(Vec::len)
    }

    #[test]
    fn buffers_of_the_usual_size_come_back_and_others_are_freed() {
        let mut buffer = take();
        buffer.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
        let before = spare();
        give_back(&mut buffer);
        assert_eq!(buffer.capacity(), 0, "the connection holds none");
        assert_eq!(spare(), before + 1, "kept for the next connection");
        let again = take();
        assert_eq!(spare(), before);
        assert!(again.is_empty() && again.capacity() >= SIZE);
        // One grown for a large head is not kept; nor are more than KEPT.
        let mut large = BytesMut::with_capacity(16 * SIZE);
        give_back(&mut large);
        assert_eq!(spare(), before);
        for _ in 0..KEPT + 10 {
            give_back(&mut BytesMut::with_capacity(SIZE));
        }
        assert_eq!(spare(), KEPT);
    }
}
