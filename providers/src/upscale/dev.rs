//! The offline upscaler of the embedded default: nearest-neighbour scaling
//! of the source PNG.

use std::io::Cursor;

use async_trait::async_trait;
use bytes::Bytes;
use tokio_util::sync::CancellationToken;

use super::{UpscaleRequest, UpscaledImage, Upscaler, cancelled_error};
use crate::ProviderError;

/// The factors the dev upscaler accepts.
pub const DEV_MAX_SCALE: u32 = 4;
/// The largest output side the dev upscaler produces.
pub const DEV_MAX_SIDE: u32 = 8192;

/// Offline: nearest-neighbour scaling of `req.source_png` (it ignores
/// `image_url`), so the upscale pipeline runs with no network and no keys.
/// The output is a PNG of the same colour type.
#[derive(Debug, Clone, Copy, Default)]
pub struct DevUpscaler;

#[async_trait]
impl Upscaler for DevUpscaler {
    fn name(&self) -> &'static str {
        "dev"
    }

    async fn upscale(
        &self,
        req: &UpscaleRequest,
        cancel: &CancellationToken,
    ) -> Result<UpscaledImage, ProviderError> {
        if !(1..=DEV_MAX_SCALE).contains(&req.scale) {
            return Err(ProviderError::permanent(
                "invalid_scale",
                format!(
                    "scale {} is not one the dev upscaler makes (1 to {DEV_MAX_SCALE})",
                    req.scale
                ),
            ));
        }
        let Some(source) = req.source_png.clone() else {
            return Err(ProviderError::permanent(
                "missing_source",
                "the dev upscaler needs the source PNG in the request",
            ));
        };
        if cancel.is_cancelled() {
            return Err(cancelled_error());
        }
        let scale = req.scale;
        // Decoding, scaling and deflate are CPU work: off the async threads.
        let work = tokio::task::spawn_blocking(move || scale_png(&source, scale));
        tokio::select! {
            biased;
            () = cancel.cancelled() => Err(cancelled_error()),
            done = work => match done {
                Ok(result) => result,
                Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                Err(e) => Err(ProviderError::transient(
                    "worker_shutting_down",
                    format!("the blocking task did not run: {e}"),
                )),
            },
        }
    }
}

fn scale_png(source: &[u8], scale: u32) -> Result<UpscaledImage, ProviderError> {
    let unreadable = |e: png::DecodingError| {
        ProviderError::permanent(
            "invalid_image",
            format!("the source is not a readable PNG: {e}"),
        )
    };
    let mut decoder = png::Decoder::new(Cursor::new(source));
    // 8 bits per sample, palettes expanded: one pixel = `samples` bytes.
    decoder.set_transformations(png::Transformations::normalize_to_color8());
    let mut reader = decoder.read_info().map_err(unreadable)?;
    let (width, height) = (reader.info().width, reader.info().height);
    let side = |n: u32| n.checked_mul(scale).filter(|s| *s <= DEV_MAX_SIDE);
    let (Some(out_w), Some(out_h)) = (side(width), side(height)) else {
        return Err(ProviderError::permanent(
            "invalid_size",
            format!(
                "{width}x{height} × {scale} is over the dev upscaler's {DEV_MAX_SIDE} per side"
            ),
        ));
    };
    let size = reader.output_buffer_size().ok_or_else(|| {
        ProviderError::permanent("invalid_image", "the source PNG is too large to decode")
    })?;
    let mut pixels = vec![0; size];
    let frame = reader.next_frame(&mut pixels).map_err(unreadable)?;
    let px = frame.color_type.samples();
    let (scale, in_w) = (scale as usize, width as usize);
    let mut out = Vec::with_capacity(size * scale * scale);
    for row in pixels[..frame.buffer_size()].chunks_exact(frame.line_size) {
        let mut line = Vec::with_capacity(in_w * px * scale);
        for pixel in row[..in_w * px].chunks_exact(px) {
            for _ in 0..scale {
                line.extend_from_slice(pixel);
            }
        }
        for _ in 0..scale {
            out.extend_from_slice(&line);
        }
    }
    let encoded = encode(&out, out_w, out_h, frame.color_type).map_err(|e| {
        ProviderError::permanent(
            "encode_failed",
            format!("the PNG could not be written: {e}"),
        )
    })?;
    Ok(UpscaledImage {
        bytes: Bytes::from(encoded),
        content_type: "image/png".to_owned(),
        width: out_w,
        height: out_h,
    })
}

fn encode(
    pixels: &[u8],
    width: u32,
    height: u32,
    color: png::ColorType,
) -> Result<Vec<u8>, png::EncodingError> {
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, width, height);
    encoder.set_color(color);
    encoder.set_depth(png::BitDepth::Eight);
    encoder.set_compression(png::Compression::Fastest);
    let mut writer = encoder.write_header()?;
    writer.write_image_data(pixels)?;
    writer.finish()?;
    Ok(out)
}
