//! TEMPORARY forwarders, replaced by the AVX2 kernels.
use super::super::search::AffineSearch;
use super::super::QK_K;

#[target_feature(enable = "avx2,fma")]
pub unsafe fn affine_subblocks(
    xs: &[f32],
    weights: &[f32],
    sub: usize,
    p: AffineSearch,
    levels: &mut [u8; QK_K],
    scales: &mut [f32],
    mins: &mut [f32],
) {
    super::affine_subblocks_scalar(xs, weights, sub, p, levels, scales, mins)
}
#[target_feature(enable = "avx2,fma")]
pub unsafe fn iq4_scales8(xs: &[f32], weights: &[f32]) -> [f32; 8] {
    super::iq4_scales8_scalar(xs, weights)
}
