//! `GET /v1/labels/{id}/preview.png`: the label drawn by the tag's own firmware renderer
//! (`aisle_firmware::render_label` into its `FrameBuffer`) from the layer and fields the label
//! confirmed, so the picture is what the panel shows, pixel for pixel.
use aisle_drivers::esl::{NameRenderer, NameText};
use aisle_firmware::{FrameBuffer, LabelColor, render_label};
use aisle_protocol::esl::{DynamicFields, LayerHash, LayerImage, Panel};

/// Why a preview could not be drawn.
#[derive(Debug, thiserror::Error)]
pub enum PreviewError {
    /// The name renders to another layer than the one the label confirmed (the renderer or its
    /// font changed since): the gateway cannot reproduce that screen.
    #[error("the layer the label confirmed ({confirmed}) cannot be drawn again (renders as {now})")]
    LayerChanged {
        confirmed: LayerHash,
        now: LayerHash,
    },
    #[error("drawing the label: {0}")]
    Render(String),
    #[error("encoding the PNG: {0}")]
    Png(#[from] png::EncodingError),
}

/// The colours of the PNG (the simulator's screens use the same).
pub fn rgb(c: LabelColor) -> [u8; 3] {
    match c {
        LabelColor::White => [0xff, 0xff, 0xff],
        LabelColor::Black => [0x00, 0x00, 0x00],
        LabelColor::Red => [0xd0, 0x10, 0x10],
    }
}

/// A frame buffer as an indexed PNG (white, black, red): exactly its pixels.
pub fn label_png<S: AsRef<[u8]> + AsMut<[u8]>>(
    fb: &FrameBuffer<S>,
) -> Result<Vec<u8>, png::EncodingError> {
    let (w, h) = fb.panel().size();
    let mut data = Vec::with_capacity(usize::from(w) * usize::from(h));
    for y in 0..h {
        for x in 0..w {
            data.push(match fb.pixel(x, y) {
                LabelColor::White => 0u8,
                LabelColor::Black => 1,
                LabelColor::Red => 2,
            });
        }
    }
    let palette: Vec<u8> = [LabelColor::White, LabelColor::Black, LabelColor::Red]
        .into_iter()
        .flat_map(rgb)
        .collect();
    let mut out = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut out, u32::from(w), u32::from(h));
        enc.set_color(png::ColorType::Indexed);
        enc.set_depth(png::BitDepth::Eight);
        enc.set_palette(palette);
        let mut writer = enc.write_header()?;
        writer.write_image_data(&data)?;
    }
    Ok(out)
}

/// Draws `name` (rendered as the planner does) with `fields` on `panel`, checking that the
/// layer is `layer` when given (the one the label confirmed). CPU work: call it off the async
/// runtime.
pub fn preview_png(
    renderer: &NameRenderer,
    panel: Panel,
    name: &str,
    layer: Option<LayerHash>,
    fields: &DynamicFields,
) -> Result<Vec<u8>, PreviewError> {
    let text = NameText {
        name,
        brand: None,
        details: None,
        badge: None,
    };
    let drawn = renderer
        .render_layer(panel, &text)
        .map_err(|e| PreviewError::Render(e.to_string()))?;
    if let Some(confirmed) = layer
        && confirmed != drawn.hash
    {
        return Err(PreviewError::LayerChanged {
            confirmed,
            now: drawn.hash,
        });
    }
    let image =
        LayerImage::parse(&drawn.bytes, panel).map_err(|e| PreviewError::Render(e.to_string()))?;
    let mut fb = FrameBuffer::new(panel, vec![0u8; panel.frame_bytes()])
        .map_err(|e| PreviewError::Render(format!("{e:?}")))?;
    render_label(&mut fb, Some(&image), Some(fields))
        .map_err(|e| PreviewError::Render(format!("{e:?}")))?;
    Ok(label_png(&fb)?)
}
