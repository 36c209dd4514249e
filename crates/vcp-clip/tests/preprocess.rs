//! Image preprocessing equals Pillow's bicubic resize (uint8) and torchvision's full transform.

mod common;
use candle_core::{DType, Device, Tensor};
use vcp_clip::preprocess::{load_rgb, preprocess_file, resize_rgb};

#[test]
fn resize_is_pillow_exact_and_transform_matches_torchvision() {
    let dir = common::fixtures().join("preprocess");
    let cases: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("cases.json")).unwrap()).unwrap();
    for case in cases.as_array().unwrap() {
        let name = case["image"].as_str().unwrap();
        let size = case["size"].as_u64().unwrap() as usize;
        let stem = name.trim_end_matches(".png");
        let img = load_rgb(&dir.join(name)).unwrap();
        let ours = resize_rgb(&img, size);
        let pil = Tensor::read_npy(dir.join(format!("{stem}_pil{size}.npy"))).unwrap();
        let pil: Vec<u8> = pil.flatten_all().unwrap().to_vec1::<u8>().unwrap();
        let worst = ours
            .iter()
            .zip(&pil)
            .map(|(a, b)| (*a as i32 - *b as i32).abs())
            .max()
            .unwrap();
        assert_eq!(worst, 0, "{name}: max difference to Pillow {worst}/255");
        let tv = Tensor::read_npy(dir.join(format!("{stem}_tv{size}.npy"))).unwrap();
        let t = preprocess_file(&dir.join(name), size, &Device::Cpu).unwrap();
        let d = common::max_abs_diff(&t, &tv.to_dtype(DType::F32).unwrap());
        assert!(d < 1e-5, "{name}: torchvision transform diff {d}");
    }
}
