//! Renders docs/synth_examples.png: per category, a normal sample, a defective one, and its mask
//! as a red overlay. `cargo run --release -p vcp-data --example synth_grid`
use vcp_data::synth::{sample, DOMAINS};

fn main() {
    let s = 96usize;
    let cats: Vec<(&str, &str)> = DOMAINS
        .iter()
        .flat_map(|(d, cs)| cs.iter().map(move |c| (*d, *c)))
        .collect();
    let (cols, rows) = (6usize, cats.len().div_ceil(2));
    let mut img = image::RgbImage::new((cols * s) as u32, (rows * s) as u32);
    for (k, (_, cat)) in cats.iter().enumerate() {
        let (row, col0) = (k % rows, (k / rows) * 3);
        let normal = sample(cat, 1, false, s, 0);
        let bad = sample(cat, 5, true, s, 0);
        let overlay: Vec<u8> = bad
            .image
            .chunks_exact(3)
            .zip(&bad.mask)
            .flat_map(|(p, &m)| {
                if m {
                    [255, (p[1] as u32 / 3) as u8, (p[2] as u32 / 3) as u8]
                } else {
                    [p[0], p[1], p[2]]
                }
            })
            .collect();
        for (j, data) in [&normal.image, &bad.image, &overlay].iter().enumerate() {
            for y in 0..s {
                for x in 0..s {
                    let i = (y * s + x) * 3;
                    img.put_pixel(
                        ((col0 + j) * s + x) as u32,
                        (row * s + y) as u32,
                        image::Rgb([data[i], data[i + 1], data[i + 2]]),
                    );
                }
            }
        }
    }
    std::fs::create_dir_all("docs").unwrap();
    img.save("docs/synth_examples.png").unwrap();
    println!(
        "wrote docs/synth_examples.png ({} categories: normal | defective | mask overlay)",
        cats.len()
    );
}
