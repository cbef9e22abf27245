//! The order llama-perplexity scores tasks in, so `--task-limit N` scores the same N tasks it
//! does. Both draw from `std::mt19937` seeded with 1 (tools/perplexity/perplexity.cpp):
//! HellaSwag always (every task is drawn at random from those left, even with no limit),
//! WinoGrande only when fewer tasks than the file holds are asked for.

use rand_mt::Mt;

/// `std::uniform_int_distribution<size_t>(0, range - 1)` on a 32-bit engine as GCC's
/// libstdc++ computes it (since GCC 11): Lemire's multiply-and-reject, "Fast Random Integer
/// Generation in an Interval" (2019). Builds of llama.cpp on libc++ or MSVC draw otherwise.
fn below(rng: &mut Mt, range: u32) -> usize {
    let draw = |rng: &mut Mt| u64::from(rng.next_u32()) * u64::from(range);
    let mut product = draw(rng);
    if (product as u32) < range {
        let threshold = range.wrapping_neg() % range;
        while (product as u32) < threshold {
            product = draw(rng);
        }
    }
    (product >> 32) as usize
}

/// The indices of the `count` HellaSwag tasks llama-perplexity scores, in its order: each
/// drawn uniformly from the tasks not yet drawn, which keep their file order.
pub fn hellaswag(total: usize, count: usize) -> Vec<usize> {
    let mut rng = Mt::new(1);
    let mut left: Vec<usize> = (0..total).collect();
    (0..count.min(total))
        .map(|_| left.remove(below(&mut rng, left.len() as u32)))
        .collect()
}

/// The indices of the WinoGrande tasks llama-perplexity scores: the file's order, or with
/// fewer asked for, `count` drawn as it draws them (an f32 scaling of the engine's output,
/// the drawn slot refilled from the back).
pub fn winogrande(total: usize, count: usize) -> Vec<usize> {
    if count == 0 || count >= total {
        return (0..total).collect();
    }
    let mut rng = Mt::new(1);
    let scale = 1.0f32 / (1.0 + u32::MAX as f32);
    let mut left: Vec<usize> = (0..total).collect();
    (0..count)
        .map(|_| {
            let j = (scale * rng.next_u32() as f32 * left.len() as f32) as usize;
            // f32 rounding can reach len itself, where llama.cpp reads past its vector.
            left.swap_remove(j.min(left.len() - 1))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// std::mt19937 seeded with 1 starts 1791095845, 4282876139 (the C++ standard's engine).
    #[test]
    fn the_engine_is_the_standard_one() {
        let mut rng = Mt::new(1);
        assert_eq!(rng.next_u32(), 1_791_095_845);
        assert_eq!(rng.next_u32(), 4_282_876_139);
    }

    #[test]
    fn orders_are_permutations_of_the_tasks() {
        let mut h = hellaswag(50, 50);
        assert_ne!(h, (0..50).collect::<Vec<_>>(), "HellaSwag always shuffles");
        h.sort();
        assert_eq!(h, (0..50).collect::<Vec<_>>());
        assert_eq!(winogrande(50, 0), (0..50).collect::<Vec<_>>());
        let mut w = winogrande(50, 20);
        w.sort();
        w.dedup();
        assert_eq!(w.len(), 20);
    }
}
