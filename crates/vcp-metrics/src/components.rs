//! 8-connected components of a binary mask, labelled in raster order of each component's first
//! pixel — the numbering of `skimage.measure.label(mask)` (default full connectivity in 2-D) and
//! of MVTec's `scipy.ndimage.label(mask, np.ones((3, 3)))`.

/// Labels (0 = background, 1..=k components) and the size of each component (index k-1).
pub fn label8(mask: &[bool], height: usize, width: usize) -> (Vec<u32>, Vec<u64>) {
    assert_eq!(mask.len(), height * width);
    let mut labels = vec![0u32; mask.len()];
    let mut sizes = Vec::new();
    let mut stack = Vec::new();
    for start in 0..mask.len() {
        if !mask[start] || labels[start] != 0 {
            continue;
        }
        let id = sizes.len() as u32 + 1;
        let mut size = 0u64;
        labels[start] = id;
        stack.push(start);
        while let Some(p) = stack.pop() {
            size += 1;
            let (y, x) = ((p / width) as isize, (p % width) as isize);
            for dy in -1..=1isize {
                for dx in -1..=1isize {
                    let (ny, nx) = (y + dy, x + dx);
                    if ny < 0 || nx < 0 || ny >= height as isize || nx >= width as isize {
                        continue;
                    }
                    let q = ny as usize * width + nx as usize;
                    if mask[q] && labels[q] == 0 {
                        labels[q] = id;
                        stack.push(q);
                    }
                }
            }
        }
        sizes.push(size);
    }
    (labels, sizes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diagonal_pixels_connect() {
        // 1 0 0 1
        // 0 1 0 1
        // 0 0 0 0
        // 1 1 0 0
        let m: Vec<bool> = [1, 0, 0, 1, 0, 1, 0, 1, 0, 0, 0, 0, 1, 1, 0, 0]
            .iter()
            .map(|&v| v == 1)
            .collect();
        let (l, s) = label8(&m, 4, 4);
        assert_eq!(s, vec![2, 2, 2]);
        assert_eq!(l[0], 1);
        assert_eq!(l[5], 1);
        assert_eq!(l[3], 2);
        assert_eq!(l[12], 3);
    }
}
