-- A storefront workspace whose reserved checkout session the shipped
-- payloads (testdata/events/*.json) complete: load it to see a sale booked.
-- Safe to load twice.
BEGIN;
INSERT INTO workspaces (id, name) VALUES ('00000000-0000-4000-8000-000000000001', 'Demo shop')
ON CONFLICT DO NOTHING;
INSERT INTO workspace_wallets (id, ws_id, name, currency)
VALUES ('00000000-0000-4000-8000-0000000000a1', '00000000-0000-4000-8000-000000000001', 'Main account', 'USD')
ON CONFLICT DO NOTHING;
INSERT INTO workspace_configs (ws_id, id, value)
VALUES ('00000000-0000-4000-8000-000000000001', 'default_wallet_id', '00000000-0000-4000-8000-0000000000a1')
ON CONFLICT DO NOTHING;
INSERT INTO transaction_categories (id, ws_id, name)
VALUES ('00000000-0000-4000-8000-0000000000f1', '00000000-0000-4000-8000-000000000001', 'Shop sales')
ON CONFLICT DO NOTHING;
INSERT INTO workspace_products (id, ws_id, name, finance_category_id) VALUES
    ('00000000-0000-4000-8000-0000000000b1', '00000000-0000-4000-8000-000000000001', 'Ceramic mug', '00000000-0000-4000-8000-0000000000f1'),
    ('00000000-0000-4000-8000-0000000000b2', '00000000-0000-4000-8000-000000000001', 'Tea sampler', '00000000-0000-4000-8000-0000000000f1')
ON CONFLICT DO NOTHING;
INSERT INTO inventory_checkout_sessions (id, ws_id, status, total_amount, currency, polar_checkout_id)
VALUES ('00000000-0000-4000-8000-0000000000c1', '00000000-0000-4000-8000-000000000001', 'reserved', 4950, 'usd',
        '2f1e0d9c-8b7a-4654-9321-0fedcba98765')
ON CONFLICT DO NOTHING;
INSERT INTO inventory_checkout_lines (id, checkout_session_id, product_id, quantity, unit_amount) VALUES
    ('00000000-0000-4000-8000-0000000000d1', '00000000-0000-4000-8000-0000000000c1', '00000000-0000-4000-8000-0000000000b1', 2, 1500),
    ('00000000-0000-4000-8000-0000000000d2', '00000000-0000-4000-8000-0000000000c1', '00000000-0000-4000-8000-0000000000b2', 1, 1500)
ON CONFLICT DO NOTHING;
COMMIT;
