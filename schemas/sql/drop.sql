-- Drops the demo catalog of catalog.sql (tables, triggers, functions). Idempotent.

SET LOCAL client_min_messages = warning;

DROP TABLE IF EXISTS
    technical_data,
    product_images,
    product_categories,
    product_variants,
    products,
    cms_pages,
    categories,
    brands,
    stores
CASCADE;

DROP FUNCTION IF EXISTS catalog_touch_updated_at() CASCADE;
DROP FUNCTION IF EXISTS catalog_category_no_cycle() CASCADE;
