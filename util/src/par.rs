//! Filling output buffers on all cores, piece by piece.
//!
//! The work runs on candle's barrier pool, the one that candle's own elementwise ops and
//! anymal's product kernels use: a second pool (rayon's) would put twice as many busy threads
//! as cores on the machine while both are active.

/// Calls `f(i, pieces)` for every piece index `i`, in parallel, where `pieces[k]` is
/// `outs[k][i * piece[k]..]`, `piece[k]` elements long (the last piece may be shorter). Every
/// output must split into the same number of pieces; with one piece, `f` runs on the calling
/// thread.
///
/// Panics if the outputs split into different numbers of pieces or a piece length is 0 (a
/// caller's bug).
pub fn fill_pieces<T: Send, const N: usize>(
    outs: [&mut [T]; N],
    piece: [usize; N],
    f: impl Fn(usize, [&mut [T]; N]) + Sync,
) {
    assert!(
        piece.iter().all(|&p| p > 0),
        "fill_pieces: a piece of 0 elements"
    );
    let lens = outs.each_ref().map(|o| o.len());
    let n_pieces = lens
        .first()
        .zip(piece.first())
        .map_or(0, |(l, p)| l.div_ceil(*p));
    assert!(
        (0..N).all(|k| lens[k].div_ceil(piece[k]) == n_pieces),
        "fill_pieces: outputs of {lens:?} elements in pieces of {piece:?}"
    );
    match n_pieces {
        0 => return,
        1 => return f(0, outs),
        _ => {}
    }
    // Addresses, not pointers, so that the closure is Sync; `outs` stays mutably borrowed
    // (moved into this call) until every piece is done.
    let starts = outs.map(|o| o.as_mut_ptr() as usize);
    candle_core::utils::barrier_pool().execute_chunked(n_pieces, |items| {
        for i in items {
            let pieces = std::array::from_fn(|k| {
                let start = i * piece[k];
                let len = piece[k].min(lens[k] - start);
                // SAFETY: distinct pieces of an output are disjoint and inside it, and no one
                // else can reach the outputs during this call.
                unsafe { std::slice::from_raw_parts_mut((starts[k] as *mut T).add(start), len) }
            });
            f(i, pieces);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_element_is_filled_once_from_its_own_piece() {
        for (len, piece) in [(0, 4), (3, 4), (4, 4), (1000, 7), (4096, 64)] {
            let mut a = vec![0u32; len];
            let mut b = vec![0u32; len];
            let mut per_piece = vec![0u32; len.div_ceil(piece)];
            fill_pieces(
                [&mut a, &mut b, &mut per_piece],
                [piece, piece, 1],
                |i, [pa, pb, pp]| {
                    assert!(pa.len() <= piece && pp.len() == 1);
                    for (j, (x, y)) in pa.iter_mut().zip(pb.iter_mut()).enumerate() {
                        let at = (i * piece + j) as u32;
                        *x += at;
                        *y += 2 * at + 1;
                    }
                    pp[0] += i as u32 + 1;
                },
            );
            assert!(a.iter().enumerate().all(|(i, &v)| v == i as u32));
            assert!(b.iter().enumerate().all(|(i, &v)| v == 2 * i as u32 + 1));
            assert!(per_piece
                .iter()
                .enumerate()
                .all(|(i, &v)| v == i as u32 + 1));
        }
    }

    #[test]
    #[should_panic(expected = "pieces of")]
    fn outputs_of_different_piece_counts_are_refused() {
        let (mut a, mut b) = (vec![0f32; 10], vec![0f32; 3]);
        fill_pieces([&mut a, &mut b], [5, 1], |_, _| {});
    }
}
