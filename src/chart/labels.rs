//! Point labels that overlap neither each other nor the markers: each label tries positions
//! around its point, nearest first, and takes the first free one inside the plot; far positions
//! get a leader line. Greedy, in order of the points; enough for the few dozen points of a plan.

/// A pixel rectangle, right- and bottom-exclusive.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rect {
    pub x0: i32,
    pub y0: i32,
    pub x1: i32,
    pub y1: i32,
}

impl Rect {
    pub fn around(x: i32, y: i32, r: i32) -> Rect {
        Rect {
            x0: x - r,
            y0: y - r,
            x1: x + r + 1,
            y1: y + r + 1,
        }
    }

    pub fn overlaps(&self, o: &Rect) -> bool {
        self.x0 < o.x1 && o.x0 < self.x1 && self.y0 < o.y1 && o.y0 < self.y1
    }

    fn inside(&self, bounds: &Rect) -> bool {
        self.x0 >= bounds.x0 && self.y0 >= bounds.y0 && self.x1 <= bounds.x1 && self.y1 <= bounds.y1
    }

    fn overlap_area(&self, o: &Rect) -> i64 {
        let w = (self.x1.min(o.x1) - self.x0.max(o.x0)).max(0) as i64;
        let h = (self.y1.min(o.y1) - self.y0.max(o.y0)).max(0) as i64;
        w * h
    }
}

/// Where one label went: its box, and whether it is far enough to need a leader line.
#[derive(Clone, Copy, Debug)]
pub struct Placed {
    pub rect: Rect,
    pub leader: bool,
}

/// Places a label of `size` (w, h) for each point. `obstacles` (markers, the legend) are
/// avoided as well as the labels already placed.
pub fn place(
    points: &[(i32, i32)],
    sizes: &[(i32, i32)],
    bounds: Rect,
    obstacles: &[Rect],
) -> Vec<Placed> {
    let mut taken: Vec<Rect> = obstacles.to_vec();
    let mut out = Vec::with_capacity(points.len());
    for (&(px, py), &(w, h)) in points.iter().zip(sizes) {
        let mut best: Option<(i64, Placed)> = None;
        'rings: for (ring, gap) in [6, 14, 26, 40, 56].into_iter().enumerate() {
            let candidates = [
                (px + gap, py - h / 2),
                (px - gap - w, py - h / 2),
                (px - w / 2, py - gap - h),
                (px - w / 2, py + gap),
                (px + gap, py - gap - h),
                (px + gap, py + gap),
                (px - gap - w, py - gap - h),
                (px - gap - w, py + gap),
            ];
            for (x0, y0) in candidates {
                let rect = Rect {
                    x0,
                    y0,
                    x1: x0 + w,
                    y1: y0 + h,
                };
                if !rect.inside(&bounds) {
                    continue;
                }
                let overlap: i64 = taken.iter().map(|t| rect.overlap_area(t)).sum();
                let placed = Placed {
                    rect,
                    leader: ring >= 2,
                };
                if overlap == 0 {
                    best = Some((0, placed));
                    break 'rings;
                }
                if best.is_none_or(|(o, _)| overlap < o) {
                    best = Some((overlap, placed));
                }
            }
        }
        let placed = best.map(|(_, p)| p).unwrap_or(Placed {
            rect: Rect {
                x0: px + 6,
                y0: py - h / 2,
                x1: px + 6 + w,
                y1: py - h / 2 + h,
            },
            leader: false,
        });
        taken.push(placed.rect);
        out.push(placed);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crowded_labels_do_not_overlap_each_other_or_markers() {
        // A cluster of points, as the high-bit end of a quality curve gives.
        let points: Vec<(i32, i32)> = (0..12).map(|i| (300 + i * 9, 200 + (i % 3) * 7)).collect();
        let sizes = vec![(48, 14); points.len()];
        let markers: Vec<Rect> = points.iter().map(|&(x, y)| Rect::around(x, y, 5)).collect();
        let bounds = Rect {
            x0: 0,
            y0: 0,
            x1: 800,
            y1: 600,
        };
        let placed = place(&points, &sizes, bounds, &markers);
        for (i, a) in placed.iter().enumerate() {
            assert!(
                markers.iter().all(|m| !a.rect.overlaps(m)),
                "label {i} on a marker"
            );
            for b in &placed[i + 1..] {
                assert!(!a.rect.overlaps(&b.rect), "labels overlap: {a:?} {b:?}");
            }
        }
    }
}
