//! The offline image generator of the embedded default: it renders real
//! PNGs from the prompt, so the whole generation pipeline runs on a fresh
//! machine with no network and no keys.

use std::io::Cursor;

use async_trait::async_trait;
use bytes::Bytes;
use sha2::{Digest, Sha256};

use super::{GeneratedImage, ImageGenerator, ImageRequest};
use crate::{ProviderError, blocking::blocking};

/// The largest width or height the dev generator renders.
pub const MAX_SIDE: u32 = 4096;
/// The most images one request may ask for (OpenAI's limit too).
pub const MAX_IMAGES: u32 = 10;
/// The PNG text keyword carrying the prompt, so the offline moderator
/// ([`DevModerator`](crate::moderation::DevModerator)) can judge
/// an image offline by what it was asked to show. It lives only between
/// generation and output moderation: the workers store images through
/// [`strip_output`](crate::image_metadata::strip_output), which drops it.
pub const PROMPT_KEYWORD: &str = "prompt";

/// Renders one abstract picture per image: a two-colour gradient, stripes
/// and a disc, all chosen by SHA-256 of the prompt and the image's index.
/// The same request always gives the same bytes; different prompts give
/// visibly different pictures.
#[derive(Debug, Clone, Copy, Default)]
pub struct DevGenerator;

#[async_trait]
impl ImageGenerator for DevGenerator {
    fn name(&self) -> &'static str {
        "dev"
    }

    async fn generate(&self, req: &ImageRequest) -> Result<Vec<GeneratedImage>, ProviderError> {
        validate(req)?;
        let req = req.clone();
        // Rendering and deflate are CPU work: off the async threads, so
        // heartbeats and other jobs on this worker keep running.
        blocking(move || {
            (0..req.n)
                .map(|index| render(&req.prompt, index, req.width, req.height))
                .collect()
        })
        .await
    }
}

fn validate(req: &ImageRequest) -> Result<(), ProviderError> {
    let side = 1..=MAX_SIDE;
    if !side.contains(&req.width) || !side.contains(&req.height) {
        return Err(ProviderError::permanent(
            "invalid_size",
            format!(
                "{}x{} is not a size the dev generator renders (1 to {MAX_SIDE} per side)",
                req.width, req.height
            ),
        ));
    }
    if !(1..=MAX_IMAGES).contains(&req.n) {
        return Err(ProviderError::permanent(
            "invalid_n",
            format!("n = {}: ask for 1 to {MAX_IMAGES} images", req.n),
        ));
    }
    Ok(())
}

type Rgb = [u8; 3];

/// Renders and encodes one image. Every row is a few slice copies out of
/// precomputed colour tables (no per-pixel arithmetic), so a 1024×1024
/// image renders and encodes in well under a second even unoptimised.
fn render(
    prompt: &str,
    index: u32,
    width: u32,
    height: u32,
) -> Result<GeneratedImage, ProviderError> {
    let seed: [u8; 32] = Sha256::new()
        .chain_update(b"kiln dev generator\0")
        .chain_update(prompt.as_bytes())
        .chain_update(b"\0")
        .chain_update(index.to_le_bytes())
        .finalize()
        .into();
    let (w, h) = (width as usize, height as usize);
    let colour = |i: usize| -> Rgb { [seed[i], seed[i + 1], seed[i + 2]] };
    let (from, to, stripe, disc) = (colour(0), colour(3), colour(6), colour(9));

    // The gradient runs along x + y, so row y is the slice of one table of
    // diagonal colours starting at y. Stripes use a second table in which
    // every colour is pulled towards the stripe colour.
    let diagonals = w + h - 1;
    let span = (diagonals - 1).max(1);
    let plain: Vec<u8> = (0..diagonals)
        .flat_map(|s| mix(from, to, (s * 255 / span) as u8))
        .collect();
    let striped: Vec<u8> = plain
        .chunks_exact(3)
        .flat_map(|c| mix([c[0], c[1], c[2]], stripe, 160))
        .collect();
    let table = |band: usize| if band % 2 == 1 { &striped } else { &plain };

    let period = (w.min(h) / (4 + usize::from(seed[12] % 12))).max(2);
    let direction = seed[13] % 4;

    let cx = usize::from(u16::from_le_bytes([seed[14], seed[15]])) % w;
    let cy = usize::from(u16::from_le_bytes([seed[16], seed[17]])) % h;
    let radius = (w.min(h) * (15 + usize::from(seed[18] % 35)) / 100) as u64;
    let disc_row: Vec<u8> = std::iter::repeat_n(disc, w).flatten().collect();

    let mut pixels = vec![0u8; w * h * 3];
    for (y, row) in pixels.chunks_exact_mut(w * 3).enumerate() {
        // Stripes are bands of `period` along x, y, x + y or x - y: a row
        // crosses them in runs, each copied from one table.
        let mut x = 0;
        while x < w {
            let (band, end) = match direction {
                1 => (y / period, w),
                d => {
                    let key = x + match d {
                        0 => 0,
                        2 => y,
                        _ => h - 1 - y,
                    };
                    (key / period, (x + period - key % period).min(w))
                }
            };
            row[x * 3..end * 3].copy_from_slice(&table(band)[(x + y) * 3..(end + y) * 3]);
            x = end;
        }
        // The disc's extent on this row, from one integer square root.
        let dy = y.abs_diff(cy) as u64;
        if dy <= radius {
            let half = (radius * radius - dy * dy).isqrt() as usize;
            let (left, right) = (cx.saturating_sub(half), (cx + half + 1).min(w));
            row[left * 3..right * 3].copy_from_slice(&disc_row[left * 3..right * 3]);
        }
    }

    let png = encode(&pixels, width, height, prompt).map_err(|e| {
        ProviderError::permanent("render_failed", format!("encoding the PNG failed: {e}"))
    })?;
    Ok(GeneratedImage {
        png: Bytes::from(png),
        width,
        height,
    })
}

/// `a` blended towards `b` by `t`/255.
fn mix(a: Rgb, b: Rgb, t: u8) -> Rgb {
    let t = u16::from(t);
    let channel = |a: u8, b: u8| ((u16::from(a) * (255 - t) + u16::from(b) * t) / 255) as u8;
    [
        channel(a[0], b[0]),
        channel(a[1], b[1]),
        channel(a[2], b[2]),
    ]
}

fn encode(
    pixels: &[u8],
    width: u32,
    height: u32,
    prompt: &str,
) -> Result<Vec<u8>, png::EncodingError> {
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, width, height);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    // Up-filter plus fdeflate's fastest mode: several times faster than the
    // adaptive filter for files a few percent larger.
    encoder.set_compression(png::Compression::Fastest);
    // tEXt is Latin-1; a prompt outside it goes in iTXt (UTF-8) instead.
    if prompt.chars().all(|c| u32::from(c) <= 0xff) {
        encoder.add_text_chunk(PROMPT_KEYWORD.to_owned(), prompt.to_owned())?;
    } else {
        encoder.add_itxt_chunk(PROMPT_KEYWORD.to_owned(), prompt.to_owned())?;
    }
    let mut writer = encoder.write_header()?;
    writer.write_image_data(pixels)?;
    writer.finish()?;
    Ok(out)
}

/// Decodes the whole image (so a truncated or corrupt one is refused) and
/// returns the text of its `prompt` chunks, of whichever text chunk type.
pub(crate) fn embedded_prompt(png: &[u8]) -> Result<Option<String>, png::DecodingError> {
    let mut reader = png::Decoder::new(Cursor::new(png)).read_info()?;
    while reader.next_row()?.is_some() {}
    reader.finish()?;

    let info = reader.info();
    let mut texts = Vec::new();
    for chunk in &info.uncompressed_latin1_text {
        if chunk.keyword == PROMPT_KEYWORD {
            texts.push(chunk.text.clone());
        }
    }
    for chunk in &info.compressed_latin1_text {
        if chunk.keyword == PROMPT_KEYWORD {
            texts.push(chunk.get_text()?);
        }
    }
    for chunk in &info.utf8_text {
        if chunk.keyword == PROMPT_KEYWORD {
            texts.push(chunk.get_text()?);
        }
    }
    Ok((!texts.is_empty()).then(|| texts.join("\n")))
}

#[cfg(test)]
mod tests {

    use super::*;

    fn request(prompt: &str, width: u32, height: u32, n: u32) -> ImageRequest {
        ImageRequest {
            reference_urls: Vec::new(),
            prompt: prompt.to_owned(),
            model: "dev".to_owned(),
            width,
            height,
            n,
        }
    }

    /// Decodes a PNG fully: (width, height, colour type, pixels).
    fn decode(png: &[u8]) -> (u32, u32, png::ColorType, Vec<u8>) {
        let mut reader = png::Decoder::new(Cursor::new(png)).read_info().unwrap();
        let mut pixels = vec![0; reader.output_buffer_size().unwrap()];
        let frame = reader.next_frame(&mut pixels).unwrap();
        (frame.width, frame.height, frame.color_type, pixels)
    }

    async fn one(prompt: &str, width: u32, height: u32) -> GeneratedImage {
        let mut images = DevGenerator
            .generate(&request(prompt, width, height, 1))
            .await
            .unwrap();
        assert_eq!(images.len(), 1);
        images.remove(0)
    }

    #[tokio::test]
    async fn renders_a_real_png_of_the_requested_size() {
        for (w, h) in [(64, 48), (1, 1), (1, 300), (300, 1), (257, 129)] {
            let image = one("a red fox in the snow", w, h).await;
            assert_eq!((image.width, image.height), (w, h));
            let (dw, dh, colour, pixels) = decode(&image.png);
            assert_eq!((dw, dh), (w, h));
            assert_eq!(colour, png::ColorType::Rgb);
            assert_eq!(pixels.len(), (w * h * 3) as usize);
        }
    }

    #[tokio::test]
    async fn the_picture_is_not_flat() {
        let (_, _, _, pixels) = decode(&one("a red fox", 128, 128).await.png);
        let distinct: std::collections::HashSet<&[u8]> = pixels.chunks_exact(3).collect();
        assert!(distinct.len() > 16, "{} colours", distinct.len());
    }

    #[tokio::test]
    async fn same_prompt_same_bytes_different_prompt_different_picture() {
        let a = one("a red fox", 96, 64).await;
        let again = one("a red fox", 96, 64).await;
        let b = one("a blue whale", 96, 64).await;
        assert_eq!(a.png, again.png);
        assert_ne!(a.png, b.png);
        // Different pixels, not only a different text chunk.
        assert_ne!(decode(&a.png).3, decode(&b.png).3);
    }

    #[tokio::test]
    async fn n_images_each_different() {
        let images = DevGenerator
            .generate(&request("a red fox", 32, 32, 3))
            .await
            .unwrap();
        assert_eq!(images.len(), 3);
        assert_ne!(decode(&images[0].png).3, decode(&images[1].png).3);
        assert_ne!(decode(&images[1].png).3, decode(&images[2].png).3);
        // Image i of a batch is image i of any batch with that prompt.
        let first = one("a red fox", 32, 32).await;
        assert_eq!(images[0].png, first.png);
    }

    #[tokio::test]
    async fn sizes_out_of_range_are_permanent_errors() {
        for (w, h) in [(0, 64), (64, 0), (4097, 64), (64, 4097), (u32::MAX, 1)] {
            let err = DevGenerator
                .generate(&request("x", w, h, 1))
                .await
                .unwrap_err();
            assert!(
                matches!(&err, ProviderError::Permanent { code, .. } if code == "invalid_size"),
                "{w}x{h}: {err}"
            );
        }
    }

    #[tokio::test]
    async fn the_largest_side_is_allowed() {
        let image = one("tall", 1, MAX_SIDE).await;
        assert_eq!(decode(&image.png).1, MAX_SIDE);
    }

    #[tokio::test]
    async fn image_counts_out_of_range_are_permanent_errors() {
        for n in [0, MAX_IMAGES + 1] {
            let err = DevGenerator
                .generate(&request("x", 8, 8, n))
                .await
                .unwrap_err();
            assert!(
                matches!(&err, ProviderError::Permanent { code, .. } if code == "invalid_n"),
                "n = {n}: {err}"
            );
        }
    }

    #[tokio::test]
    async fn a_megapixel_renders() {
        let image = one("a large landscape", 1024, 1024).await;
        assert_eq!(decode(&image.png).0, 1024);
    }

    #[tokio::test]
    async fn the_prompt_is_embedded_for_the_moderator() {
        let image = one("a red fox", 16, 16).await;
        assert_eq!(
            embedded_prompt(&image.png).unwrap().as_deref(),
            Some("a red fox")
        );
        // Outside Latin-1 it still round-trips (as iTXt).
        let image = one("一只红狐狸 🦊", 16, 16).await;
        assert_eq!(
            embedded_prompt(&image.png).unwrap().as_deref(),
            Some("一只红狐狸 🦊")
        );
    }
}
