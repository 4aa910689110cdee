-- Meoring Hub: switch on what the hub needs in an OpenEMR 8.x database.
--
-- What it does (see README.md in this folder for the why of each line):
--   1. globals: rest_api = 1, rest_fhir_api = 1, rest_system_scopes_api = 1,
--      and site_addr_oath = @site_addr_oath when that variable is set;
--   2. document categories "Imaging" and "AI Reports" under the root "Categories".
--
-- Idempotent: running it twice changes nothing the second time.
--
-- Run it against OpenEMR's database, as OpenEMR's database user, e.g.
--
--   mariadb -h DBHOST -u openemr -p openemr \
--     -e "SET @site_addr_oath = 'https://ehr.example.org'; SOURCE globals.sql;"
--
-- Leave @site_addr_oath unset (NULL) to keep whatever site_addr_oath already holds.
-- docker-compose.yml runs it through apply.sh in the one-shot `openemr-setup` service.
--
-- Table shapes relied on: globals(gl_name, gl_index, gl_value) and the nested-set
-- categories(id, name, value, parent, lft, rght, aco_spec, codes) with its single-row
-- sequence table categories_seq(id), as created by OpenEMR's sql/database.sql.

START TRANSACTION;

-- ------------------------------------------------------------------------------------
-- 1. Globals (Administration -> Config -> Connectors; openemr.md §1)
--    A global that was never saved may have no row yet: update it, or insert it.
-- ------------------------------------------------------------------------------------

-- Standard REST API (/apis/{site}/api): document upload and list (openemr.md §4.4).
UPDATE globals SET gl_value = '1' WHERE gl_name = 'rest_api';
INSERT INTO globals (gl_name, gl_index, gl_value)
    SELECT 'rest_api', 0, '1' FROM DUAL
    WHERE NOT EXISTS (SELECT 1 FROM globals WHERE gl_name = 'rest_api');

-- FHIR R4 API (/apis/{site}/fhir): reads, Patient writes, bulk export (openemr.md §3).
UPDATE globals SET gl_value = '1' WHERE gl_name = 'rest_fhir_api';
INSERT INTO globals (gl_name, gl_index, gl_value)
    SELECT 'rest_fhir_api', 0, '1' FROM DUAL
    WHERE NOT EXISTS (SELECT 1 FROM globals WHERE gl_name = 'rest_fhir_api');

-- system/* scopes: backend-services client and bulk $export (openemr.md §1, §3.4).
UPDATE globals SET gl_value = '1' WHERE gl_name = 'rest_system_scopes_api';
INSERT INTO globals (gl_name, gl_index, gl_value)
    SELECT 'rest_system_scopes_api', 0, '1' FROM DUAL
    WHERE NOT EXISTS (SELECT 1 FROM globals WHERE gl_name = 'rest_system_scopes_api');

-- Site Address Override: scheme + host of every absolute URL OpenEMR builds (issuer,
-- FHIR base, the `aud` it checks, Binary URLs). Must be set (openemr.md §1, §7.1).
UPDATE globals SET gl_value = @site_addr_oath
    WHERE gl_name = 'site_addr_oath' AND @site_addr_oath IS NOT NULL;
INSERT INTO globals (gl_name, gl_index, gl_value)
    SELECT 'site_addr_oath', 0, @site_addr_oath FROM DUAL
    WHERE @site_addr_oath IS NOT NULL
      AND NOT EXISTS (SELECT 1 FROM globals WHERE gl_name = 'site_addr_oath');

-- ------------------------------------------------------------------------------------
-- 2. Document categories (openemr.md §4.4)
--    The hub uploads reports with POST /api/patient/{pid}/document?path=<category path>.
--    There is no general imaging category by default, so we add one; lab results use the
--    built-in "Lab Report" (path /Categories/Lab_Report) and need nothing here.
--
--    categories is a nested set: a new last child of the root takes the root's current
--    rght as its lft, and the root's rght grows by two. ACL: patients|docs, the ACL the
--    document API checks for uploads.
-- ------------------------------------------------------------------------------------

SET @root_id = (SELECT id FROM categories WHERE name = 'Categories' AND parent = 0 ORDER BY id LIMIT 1);

-- "Imaging": radiology / imaging reports and key images. API path: /Categories/Imaging
SET @missing = (@root_id IS NOT NULL AND NOT EXISTS (
    SELECT 1 FROM categories WHERE name = 'Imaging' AND parent = @root_id));
SET @root_rght = (SELECT rght FROM categories WHERE id = @root_id);
SET @new_id = (SELECT MAX(id) + 1 FROM categories);
INSERT INTO categories (id, name, value, parent, lft, rght, aco_spec)
    SELECT @new_id, 'Imaging', '', @root_id, @root_rght, @root_rght + 1, 'patients|docs' FROM DUAL
    WHERE @missing;
UPDATE categories SET rght = rght + 2 WHERE id = @root_id AND @missing;

-- "AI Reports": reports produced by the hub's inference jobs. API path: /Categories/AI_Reports
SET @missing = (@root_id IS NOT NULL AND NOT EXISTS (
    SELECT 1 FROM categories WHERE name = 'AI Reports' AND parent = @root_id));
SET @root_rght = (SELECT rght FROM categories WHERE id = @root_id);
SET @new_id = (SELECT MAX(id) + 1 FROM categories);
INSERT INTO categories (id, name, value, parent, lft, rght, aco_spec)
    SELECT @new_id, 'AI Reports', '', @root_id, @root_rght, @root_rght + 1, 'patients|docs' FROM DUAL
    WHERE @missing;
UPDATE categories SET rght = rght + 2 WHERE id = @root_id AND @missing;

-- Keep OpenEMR's id sequence ahead of the rows we added (its own code allocates from it).
UPDATE categories_seq SET id = (SELECT MAX(id) FROM categories)
    WHERE id < (SELECT MAX(id) FROM categories);

COMMIT;

-- What the hub will see; printed by the one-shot service.
SELECT gl_name, gl_value FROM globals
    WHERE gl_name IN ('rest_api', 'rest_fhir_api', 'rest_system_scopes_api', 'site_addr_oath')
    ORDER BY gl_name;
SELECT id, name, parent, lft, rght, aco_spec FROM categories
    WHERE name IN ('Categories', 'Lab Report', 'Imaging', 'AI Reports')
    ORDER BY lft;
