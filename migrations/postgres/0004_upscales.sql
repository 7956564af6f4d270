-- An upscaled image is an image of the same generation made from another
-- one; generations list only their originals.
ALTER TABLE images ADD COLUMN source_image_id uuid REFERENCES images (id);
CREATE INDEX images_source ON images (source_image_id) WHERE source_image_id IS NOT NULL;
