//! Writes a grid of caption-corpus samples (top: normal/defective pairs, bottom: independent
//! samples) with their captions, to look at the pretraining data:
//! `cargo run --release -p vcp-data --example corpus_grid -- docs/corpus_examples.png 64`.
use vcp_data::corpus;

fn main() {
    let mut args = std::env::args().skip(1);
    let out = args.next().unwrap_or_else(|| "corpus_examples.png".into());
    let size: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(64);
    let (cols, rows, zoom) = (8usize, 4usize, 2usize);
    let samples = corpus::batch(0, 0, cols * rows, cols, size);
    let cell = size * zoom + 4;
    let mut img = image::RgbImage::from_pixel(
        (cols * cell) as u32,
        (rows * cell) as u32,
        image::Rgb([255, 255, 255]),
    );
    for (i, s) in samples.iter().enumerate() {
        println!(
            "{i:2} [{}] {}",
            if s.defects.is_empty() {
                "normal"
            } else {
                "defect"
            },
            s.caption
        );
        let (cx, cy) = ((i % cols) * cell + 2, (i / cols) * cell + 2);
        for y in 0..size * zoom {
            for x in 0..size * zoom {
                let p = ((y / zoom) * size + x / zoom) * 3;
                img.put_pixel(
                    (cx + x) as u32,
                    (cy + y) as u32,
                    image::Rgb([s.image[p], s.image[p + 1], s.image[p + 2]]),
                );
            }
        }
    }
    img.save(&out).expect("write the grid");
    eprintln!("wrote {out}");
}
