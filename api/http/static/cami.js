/* CAMI browser pages: sign-in, search, the study page and its viewer.
 *
 * Plain JavaScript, no build step, nothing from outside the archive. The server embeds the page's
 * data as JSON (#cami-data); this script renders it in Russian (default) or English (the toggle,
 * remembered in localStorage and a cookie). Images come from WADO-RS /rendered and
 * /frames/{n}/rendered, fetched with the session cookie by frames.js (previews sized for the link,
 * prefetch, refinement to full quality) and shown as blob: URLs.
 */
"use strict";

(function () {
  const I18N = {
    ru: {
      "brand": "ЦАМИ · Центральный архив медицинских изображений",
      // the regional dashboard (/monitoring)
      "nav.monitoring": "Мониторинг", "error.403-monitoring": "Вашей роли мониторинг региона не разрешён.",
      "error.400-organisation": "Код организации — OID из цифр и точек.", "monitoring.title": "Мониторинг региона",
      "monitoring.back": "Мониторинг региона", "monitoring.connecting": "подключение…",
      "monitoring.updated": "обновлено", "monitoring.col.org": "Организация", "monitoring.col.agent": "Агент · связь",
      "monitoring.col.heartbeat": "Последний сигнал", "monitoring.col.queue": "Очередь · ждёт дольше всех",
      "monitoring.col.today": "Сегодня: исслед. / снимков / объём", "monitoring.col.in-flight": "Передаётся",
      "monitoring.col.failures": "Сбоев за час", "monitoring.col.incomplete": "Неполных пакетов",
      "monitoring.col.emergency": "Экстренные: ждут / доставлено (очередь → доставка)",
      "monitoring.noscript": "Для обновления в реальном времени включите JavaScript.",
      "monitoring.throughput": "Поступление за 24 часа, снимков в минуту",
      "monitoring.chart-missing": "График недоступен: библиотека uPlot не установлена (infra/web-assets.sh). Цифры — в таблице ниже.",
      "monitoring.minute": "Минута (UTC)", "monitoring.instances": "Снимков", "monitoring.bytes": "Байт",
      "monitoring.rejections": "Отказов", "monitoring.reasons": "Отказы по причинам (24 часа)",
      "monitoring.none": "нет", "monitoring.transfer-events": "Последние 100 событий передачи",
      "monitoring.at": "Время (UTC)", "monitoring.transfer": "Передача", "monitoring.event": "Событие",
      "monitoring.state": "Состояние", "monitoring.attempt": "Попытка", "monitoring.error": "Ошибка",
      "nav.search": "Поиск", "nav.back-to-search": "К поиску исследований", "signout": "Выйти",
      "role.radiologist": "врач-рентгенолог", "role.referring-doctor": "лечащий врач",
      "role.administrator": "администратор", "role.auditor": "аудитор", "role.regional-it": "ИТ региона",
      "role.analyst": "аналитик", "role.modality": "модальность",
      "signin.title": "Вход", "signin.user": "Имя пользователя", "signin.token": "Токен доступа",
      "signin.submit": "Войти", "signin.bad": "Неверное имя пользователя или токен.",
      "signin.needed": "Войдите, чтобы открыть страницу.", "signin.unavailable": "Вход временно невозможен.",
      "signin.too-many": "Слишком много неудачных попыток входа. Повторите через несколько минут.",
      "signin.hint": "Токен выдаёт администратор архива (cami users add).",
      "error.401": "Требуется вход: токен недействителен.", "error.503": "Архив временно недоступен.",
      "error.cross-site": "Вход возможен только со страницы архива.",
      "error.400-study": "Ссылка неполна: нужны patient (ID пациента) и study (StudyInstanceUID).",
      "error.403-study": "Вашей роли просмотр исследований не разрешён.",
      "error.403-search": "Вашей роли поиск пациентов не разрешён.",
      "error.404-study": "Исследование этого пациента не найдено.",
      "noscript": "Для просмотра изображений включите JavaScript.",
      "search.title": "Исследования пациента", "search.patient": "ID пациента",
      "search.name": "Фамилия (можно с *)", "search.submit": "Найти",
      "search.hint": "Введите ID пациента или фамилию. Показываются исследования из всех организаций региона, новые сверху.",
      "search.none": "Ничего не найдено.", "search.truncated": "Показаны первые 200 исследований; уточните запрос.",
      "search.bad-patient": "ID пациента: не более 64 символов, без управляющих символов.",
      "search.bad-name": "Фамилия: не более 64 символов, без управляющих символов.",
      "col.date": "Дата", "col.patient": "Пациент", "col.id": "ID", "col.birth": "Дата рожд.",
      "col.modality": "Модальность", "col.description": "Описание", "col.org": "Организации",
      "col.accession": "Номер заявки", "col.report": "Заключение", "col.images": "Снимки", "open": "Открыть",
      "patient": "Пациент", "patient.id": "ID", "patient.birth": "Дата рождения", "patient.sex": "Пол",
      "patient.merged": "Объединён с ID",
      "sex.M": "мужской", "sex.F": "женский", "sex.O": "другой",
      "study": "Исследование", "study.date": "Дата", "study.description": "Описание",
      "study.modalities": "Модальности", "study.orgs": "Организации", "org.unknown": "нет в региональном справочнике", "study.accession": "Номер заявки",
      "study.referring": "Направивший врач", "study.counts": "Серий / снимков", "study.uid": "UID",
      "study.complete": "Комплектность", "study.complete.ok": "полный пакет", "study.missing": "не хватает",
      "emergency": "экстренное",
      "series": "Серии", "series.images": "снимков", "series.frames": "кадров",
      "priors": "Другие исследования пациента", "priors.none": "Других исследований нет.",
      "priors.newer": "новее", "priors.compare": "открыть для сравнения",
      "order": "Заявка", "order.referral": "Направление", "order.scheduled": "Назначено",
      "order.in-progress": "Выполняется", "order.images": "Снимки получены", "order.draft": "Черновик заключения",
      "order.signed": "Заключение подписано", "order.available": "Доступно в регионе",
      "order.cancelled": "Заявка отменена", "order.discontinued": "Исследование прервано",
      "viewer.window": "Окно", "viewer.default": "Из файла", "viewer.lung": "Лёгкие",
      "viewer.mediastinum": "Средостение", "viewer.bone": "Кости", "viewer.brain": "Мозг",
      "viewer.t1": "T1", "viewer.t2": "T2", "viewer.custom": "Своё", "viewer.center": "Ц", "viewer.width": "Ш",
      "viewer.apply": "Применить", "viewer.zoom": "Масштаб", "viewer.fit": "Вписать",
      "viewer.image": "Изобр.", "viewer.number": "№", "viewer.frame": "кадр",
      "viewer.loading": "Загрузка…", "viewer.no-images": "В исследовании нет изображений.",
      "viewer.loading-slice": "загружается", "viewer.full": "Полное качество",
      "viewer.full-hint": "Всегда без потерь и в полном разрешении (медленнее на слабом канале)",
      "viewer.kind.preview": "предпросмотр", "viewer.kind.full": "без потерь",
      "viewer.help": "Колесо мыши или ↑/↓ — листать; Ctrl+колесо или +/− — масштаб; перетаскивание — сдвиг.",
      "viewer.err.401": "Сеанс истёк — войдите снова.", "viewer.err.403": "Нет доступа к изображениям.",
      "viewer.err.404": "Изображение не найдено в архиве.",
      "viewer.err.406": "Этот объект нельзя показать как изображение.",
      "viewer.err.other": "Не удалось загрузить изображение",
      "report": "Заключение", "report.none": "Подписанного заключения пока нет",
      "report.draft": "Черновик — заключение не подписано", "report.signed": "Заключение подписано",
      "report.amended": "Заключение подписано, внесены исправления",
      "report.protocol": "Протокол", "report.conclusion": "Заключение",
      "report.signed-by": "Подписал(а)", "report.author": "Автор",
      "report.draft-hidden": "Текст черновика доступен только рентгенологам.",
      "report.amendment": "Исправление", "report.reason": "Причина", "report.before": "До исправления",
      "report.by": "Исправил(а)", "report.draft-mark": "ЧЕРНОВИК",
      "reading.double-reading": "Независимое прочтение", "reading.second-opinion": "Второе мнение",
      "reading.arbitration": "Решение арбитра", "reading.assessment": "Оценка",
      "reading.blinded": "Прочтение другого врача скрыто, пока вы не подпишете своё (двойное чтение).",
      // the auditor's pages (api/http/audit_pages.py)
      "audit.access": "Кто видел пациента", "audit.accesses": "Обращений", "audit.at": "Запись на момент времени",
      "audit.bad-query": "Запрос: не более 128 символов, без управляющих символов.",
      "audit.bad-time": "Неверное время: нужен момент ISO 8601, например 2026-03-01T12:00:00+03:00.",
      "audit.broken": "Цепочка нарушена: записей с ошибкой", "audit.bundle": "Подписанный пакет (JSON)",
      "audit.bundle-hint": "Проверка: cami audit verify-bundle ФАЙЛ", "audit.check": "Проверка",
      "audit.events": "событий", "audit.first-broken": "Первая:", "audit.from": "Откуда",
      "audit.ids": "ID пациента", "audit.instances": "Снимков / версий",
      "audit.instances-added": "Добавлено снимков", "audit.instances-replaced": "заменено",
      "audit.intact": "Цепочка цела: все записи сходятся", "audit.kind.organisation": "организация",
      "audit.kind.patient": "пациент", "audit.kind.record": "запись", "audit.kind.report": "заключение",
      "audit.kind.study": "исследование", "audit.known-at": "Известно на", "audit.merge-added": "Объединение",
      "audit.merges": "Объединения пациентов", "audit.more": "Также:",
      "audit.not-yet": "На этот момент исследование архиву ещё не известно.", "audit.on-images": "на снимках",
      "audit.organisation": "Организация (код)", "audit.position": "Позиция", "audit.received": "Получен",
      "audit.record": "Запись", "audit.search": "UID исследования, ID пациента, номер заключения или организация",
      "audit.show": "Показать", "audit.since": "Изменилось с тех пор", "audit.since-date": "С",
      "audit.studies": "исследований", "audit.time": "Момент (ISO 8601, без зоны — UTC)",
      "audit.timeline": "История записи", "audit.title": "Журнал аудита",
      "audit.unknown-study": "В журнале событий нет такого исследования.", "audit.until-date": "По",
      "audit.user": "Пользователь", "audit.version": "Версия", "audit.what": "Что", "audit.when": "Когда (UTC)",
      "audit.who": "Кто", "audit.with-log": "(сверено с журналом событий)",
      "error.400-record": "Неверный идентификатор записи.",
      "error.403-audit": "Вашей роли журнал аудита не доступен.",
      "error.404-record": "В журнале аудита нет такой записи.", "nav.audit": "Аудит",
    },
    en: {
      "brand": "CAMI · Central Archive of Medical Images",
      // the regional dashboard (/monitoring)
      "nav.monitoring": "Monitoring", "error.403-monitoring": "Your role may not monitor the region.",
      "error.400-organisation": "An organisation code is an OID of digits and dots.",
      "monitoring.title": "Regional monitoring", "monitoring.back": "Regional monitoring",
      "monitoring.connecting": "connecting…", "monitoring.updated": "updated", "monitoring.col.org": "Organisation",
      "monitoring.col.agent": "Agent · link", "monitoring.col.heartbeat": "Last heartbeat",
      "monitoring.col.queue": "Queue · oldest waiting", "monitoring.col.today": "Today: studies / instances / bytes",
      "monitoring.col.in-flight": "In flight", "monitoring.col.failures": "Failures, last hour",
      "monitoring.col.incomplete": "Incomplete packages",
      "monitoring.col.emergency": "Emergencies: waiting / delivered (queue → delivery)",
      "monitoring.noscript": "Enable JavaScript for live updates.",
      "monitoring.throughput": "Arrivals over 24 hours, instances per minute",
      "monitoring.chart-missing": "No chart: uPlot is not installed (infra/web-assets.sh). The figures are in the table below.",
      "monitoring.minute": "Minute (UTC)", "monitoring.instances": "Instances", "monitoring.bytes": "Bytes",
      "monitoring.rejections": "Rejections", "monitoring.reasons": "Rejections by reason (24 hours)",
      "monitoring.none": "none", "monitoring.transfer-events": "Last 100 transfer events",
      "monitoring.at": "Time (UTC)", "monitoring.transfer": "Transfer", "monitoring.event": "Event",
      "monitoring.state": "State", "monitoring.attempt": "Attempt", "monitoring.error": "Error",
      "nav.search": "Search", "nav.back-to-search": "Back to study search", "signout": "Sign out",
      "role.radiologist": "radiologist", "role.referring-doctor": "referring doctor",
      "role.administrator": "administrator", "role.auditor": "auditor", "role.regional-it": "regional IT",
      "role.analyst": "analyst", "role.modality": "modality",
      "signin.title": "Sign in", "signin.user": "User name", "signin.token": "Access token",
      "signin.submit": "Sign in", "signin.bad": "Wrong user name or token.",
      "signin.needed": "Sign in to open the page.", "signin.unavailable": "Sign-in is unavailable for now.",
      "signin.too-many": "Too many failed sign-ins. Try again in a few minutes.",
      "signin.hint": "The archive administrator issues tokens (cami users add).",
      "error.401": "Sign-in required: the token is not valid.", "error.503": "The archive is unavailable for now.",
      "error.cross-site": "Sign-in works only from the archive's own page.",
      "error.400-study": "Incomplete link: patient (patient ID) and study (StudyInstanceUID) are required.",
      "error.403-study": "Your role may not view studies.",
      "error.403-search": "Your role may not search patients.",
      "error.404-study": "No such study for this patient.",
      "noscript": "Enable JavaScript to view images.",
      "search.title": "Patient studies", "search.patient": "Patient ID",
      "search.name": "Family name (* allowed)", "search.submit": "Search",
      "search.hint": "Enter a patient ID or a family name. Studies from every organisation in the region, newest first.",
      "search.none": "Nothing found.", "search.truncated": "The first 200 studies are shown; narrow the search.",
      "search.bad-patient": "Patient ID: at most 64 characters, no control characters.",
      "search.bad-name": "Family name: at most 64 characters, no control characters.",
      "col.date": "Date", "col.patient": "Patient", "col.id": "ID", "col.birth": "Born",
      "col.modality": "Modality", "col.description": "Description", "col.org": "Organisations",
      "col.accession": "Accession", "col.report": "Report", "col.images": "Images", "open": "Open",
      "patient": "Patient", "patient.id": "ID", "patient.birth": "Birth date", "patient.sex": "Sex",
      "patient.merged": "Merged with ID",
      "sex.M": "male", "sex.F": "female", "sex.O": "other",
      "study": "Study", "study.date": "Date", "study.description": "Description",
      "study.modalities": "Modalities", "study.orgs": "Organisations", "org.unknown": "not in the regional directory", "study.accession": "Accession",
      "study.referring": "Referring physician", "study.counts": "Series / images", "study.uid": "UID",
      "study.complete": "Package", "study.complete.ok": "complete", "study.missing": "missing",
      "emergency": "emergency",
      "series": "Series", "series.images": "images", "series.frames": "frames",
      "priors": "Other studies of the patient", "priors.none": "No other studies.",
      "priors.newer": "newer", "priors.compare": "open for comparison",
      "order": "Order", "order.referral": "Referral", "order.scheduled": "Scheduled",
      "order.in-progress": "In progress", "order.images": "Images received", "order.draft": "Report draft",
      "order.signed": "Report signed", "order.available": "Available in the region",
      "order.cancelled": "Order cancelled", "order.discontinued": "Procedure discontinued",
      "viewer.window": "Window", "viewer.default": "From file", "viewer.lung": "Lung",
      "viewer.mediastinum": "Mediastinum", "viewer.bone": "Bone", "viewer.brain": "Brain",
      "viewer.t1": "T1", "viewer.t2": "T2", "viewer.custom": "Custom", "viewer.center": "C", "viewer.width": "W",
      "viewer.apply": "Apply", "viewer.zoom": "Zoom", "viewer.fit": "Fit",
      "viewer.image": "Image", "viewer.number": "No.", "viewer.frame": "frame",
      "viewer.loading": "Loading…", "viewer.no-images": "The study has no images.",
      "viewer.loading-slice": "loading", "viewer.full": "Full quality",
      "viewer.full-hint": "Always lossless at full resolution (slower on a thin link)",
      "viewer.kind.preview": "preview", "viewer.kind.full": "lossless",
      "viewer.help": "Mouse wheel or ↑/↓ to scroll; Ctrl+wheel or +/− to zoom; drag to pan.",
      "viewer.err.401": "The session has expired: sign in again.", "viewer.err.403": "No access to images.",
      "viewer.err.404": "The image is not in the archive.",
      "viewer.err.406": "This object cannot be shown as an image.",
      "viewer.err.other": "Could not load the image",
      "report": "Report", "report.none": "No signed report yet",
      "report.draft": "Draft: the report is not signed", "report.signed": "Report signed",
      "report.amended": "Report signed, with amendments",
      "report.protocol": "Protocol", "report.conclusion": "Conclusion",
      "report.signed-by": "Signed by", "report.author": "Author",
      "report.draft-hidden": "Draft texts are shown to radiologists only.",
      "report.amendment": "Amendment", "report.reason": "Reason", "report.before": "Before the amendment",
      "report.by": "Amended by", "report.draft-mark": "DRAFT",
      "reading.double-reading": "Independent reading", "reading.second-opinion": "Second opinion",
      "reading.arbitration": "Arbiter's decision", "reading.assessment": "Assessment",
      "reading.blinded": "Another doctor's reading is hidden until you sign your own (double reading).",
      // the auditor's pages (api/http/audit_pages.py)
      "audit.access": "Who saw this patient", "audit.accesses": "Accesses", "audit.at": "The record at a moment",
      "audit.bad-query": "Query: at most 128 characters, no control characters.",
      "audit.bad-time": "Wrong time: an ISO 8601 moment is needed, e.g. 2026-03-01T12:00:00+03:00.",
      "audit.broken": "Chain broken: entries at fault", "audit.bundle": "Signed bundle (JSON)",
      "audit.bundle-hint": "Check it: cami audit verify-bundle FILE", "audit.check": "Check",
      "audit.events": "events", "audit.first-broken": "First:", "audit.from": "From", "audit.ids": "Patient IDs",
      "audit.instances": "Instances / versions", "audit.instances-added": "Instances added",
      "audit.instances-replaced": "replaced", "audit.intact": "Chain intact: every entry adds up",
      "audit.kind.organisation": "organisation", "audit.kind.patient": "patient", "audit.kind.record": "record",
      "audit.kind.report": "report", "audit.kind.study": "study", "audit.known-at": "Known at",
      "audit.merge-added": "Merge", "audit.merges": "Patient merges", "audit.more": "Also:",
      "audit.not-yet": "The archive did not know this study yet at that moment.",
      "audit.on-images": "on the images", "audit.organisation": "Organisation (code)",
      "audit.position": "Position", "audit.received": "Received", "audit.record": "Record",
      "audit.search": "Study UID, patient ID, report ID or organisation", "audit.show": "Show",
      "audit.since": "Changed since", "audit.since-date": "From", "audit.studies": "studies",
      "audit.time": "Moment (ISO 8601; no zone: UTC)", "audit.timeline": "Record history",
      "audit.title": "Audit trail", "audit.unknown-study": "The event log holds no such study.",
      "audit.until-date": "To", "audit.user": "User", "audit.version": "Version", "audit.what": "What",
      "audit.when": "When (UTC)", "audit.who": "Who", "audit.with-log": "(checked against the event log)",
      "error.400-record": "Not a record ID.", "error.403-audit": "Your role may not read the audit trail.",
      "error.404-record": "The audit trail holds no such record.", "nav.audit": "Audit",
    },
  };

  // -- language --------------------------------------------------------------------------------
  function savedLang() {
    try {
      const stored = window.localStorage.getItem("cami.lang");
      if (stored === "en" || stored === "ru") return stored;
    } catch (e) { /* storage disabled: fall back to the cookie */ }
    const m = document.cookie.match(/(?:^|;\s*)cami_lang=(ru|en)/);
    return m ? m[1] : "ru";
  }
  let lang = savedLang();

  function t(key) {
    return (I18N[lang] && I18N[lang][key]) || I18N.ru[key] || key;
  }

  function setLang(value) {
    lang = value;
    try { window.localStorage.setItem("cami.lang", value); } catch (e) { /* ignore */ }
    document.cookie = "cami_lang=" + value + "; path=/; max-age=31536000; samesite=strict";
    applyLang();
    if (rerender) rerender();
  }

  function applyLang() {
    document.documentElement.lang = lang;
    document.querySelectorAll("[data-i18n]").forEach(function (node) {
      node.textContent = t(node.getAttribute("data-i18n"));
    });
    const toggle = document.getElementById("lang-toggle");
    if (toggle) toggle.textContent = lang === "ru" ? "EN" : "RU";
  }

  let rerender = null;

  // -- small DOM helpers -----------------------------------------------------------------------
  function el(tag, attrs) {
    const node = document.createElement(tag);
    if (attrs) {
      Object.keys(attrs).forEach(function (k) {
        const v = attrs[k];
        if (v === null || v === undefined || v === false) return;
        if (k === "text") node.textContent = v;
        else if (k === "cls") node.className = v;
        else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
        else node.setAttribute(k, v === true ? "" : v);
      });
    }
    for (let i = 2; i < arguments.length; i++) {
      const child = arguments[i];
      if (child === null || child === undefined || child === false) continue;
      if (Array.isArray(child)) child.forEach(function (c) { if (c) node.appendChild(c); });
      else node.appendChild(typeof child === "string" ? document.createTextNode(child) : child);
    }
    return node;
  }

  function dl(rows) {
    const list = el("dl");
    rows.forEach(function (row) {
      if (row[1] === null || row[1] === undefined || row[1] === "") return;
      list.appendChild(el("dt", { text: row[0] }));
      list.appendChild(typeof row[1] === "string" ? el("dd", { text: row[1] }) : el("dd", null, row[1]));
    });
    return list;
  }

  // organisations by name (the regional directory); a code it does not know keeps its marker
  function orgs(s) {
    const named = s.organisation_names || (s.organisations || []).map(function (c) { return { code: c, display: c, known: true }; });
    const nodes = [];
    named.forEach(function (o, i) {
      if (i) nodes.push(document.createTextNode(", "));
      nodes.push(el("span", {
        cls: o.known ? "org" : "org unknown", "data-code": o.code,
        title: o.known ? (o.name || o.display) + " · " + o.code : t("org.unknown"), text: o.display,
      }));
    });
    return el("span", { cls: "orgs" }, nodes);
  }

  function fmtDate(value) {
    if (!value) return "";
    const m = String(value).match(/^(\d{4})-?(\d{2})-?(\d{2})/);
    if (!m) return String(value);
    return lang === "ru" ? m[3] + "." + m[2] + "." + m[1] : m[1] + "-" + m[2] + "-" + m[3];
  }

  function fmtTime(value) {
    if (!value) return "";
    const m = String(value).match(/^(\d{2}):?(\d{2})/);
    return m ? m[1] + ":" + m[2] : String(value);
  }

  function fmtDateTime(value) {
    if (!value) return "";
    const d = new Date(String(value).replace(" ", "T"));
    if (isNaN(d.getTime())) return String(value);
    return d.toLocaleString(lang === "ru" ? "ru-RU" : "en-GB");
  }

  function fmtSex(value) {
    if (!value) return "";
    const key = "sex." + String(value).toUpperCase();
    return I18N.ru[key] ? t(key) : String(value);
  }

  function pn(value) {  // a DICOM person name as people write it
    return value ? String(value).split("=")[0].split("^").filter(Boolean).join(" ") : "";
  }

  function person(p) {
    if (!p) return "";
    return (pn(p.name) || p.code || "") + (p.name && p.code ? " (" + p.code + ")" : "");
  }

  function badge(status) {
    return el("span", { cls: "badge " + status, text: t("report." + status) });
  }

  // -- sign-in ---------------------------------------------------------------------------------
  function signinPage(data) {
    // a link from another site arrives without the SameSite=Strict cookie: if this browser is in
    // fact signed in, the same-origin check below carries the cookie and continues to the page
    fetch("/api/session", { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (r) { if (r.ok) window.location.replace(data.next || "/search"); })
      .catch(function () { /* stay on the form */ });
  }

  // -- search ----------------------------------------------------------------------------------
  function searchPage(data) {
    const root = document.getElementById("search-results");
    rerender = function () {
      root.textContent = "";
      if (data.problem) { root.appendChild(el("p", { cls: "error", id: "search-problem", text: t(data.problem) })); return; }
      if (data.results === null || data.results === undefined) { root.appendChild(el("p", { cls: "hint", text: t("search.hint") })); return; }
      if (!data.results.length) { root.appendChild(el("p", { id: "search-none", text: t("search.none") })); return; }
      const head = el("tr", null, ["col.date", "col.patient", "col.id", "col.birth", "col.modality", "col.description",
        "col.org", "col.accession", "col.images", "col.report", ""].map(function (k) { return el("th", { text: k ? t(k) : "" }); }));
      const rows = data.results.map(function (s) {
        return el("tr", { cls: "study-row", "data-study": s.study_uid },
          el("td", { cls: "nowrap", text: fmtDate(s.study_date) + " " + fmtTime(s.study_time) }),
          el("td", { text: s.patient_name || "" }),
          el("td", { cls: "nowrap", text: s.patient_id }),
          el("td", { cls: "nowrap", text: fmtDate(s.patient_birth_date) }),
          el("td", { text: (s.modalities || []).join(", ") }),
          el("td", null, s.study_description || "", s.emergency ? el("span", { cls: "badge emergency", text: " " + t("emergency") }) : null),
          el("td", null, orgs(s)),
          el("td", { text: s.accession_number || "" }),
          el("td", { text: String(s.series_count) + " / " + String(s.instance_count) }),
          el("td", null, badge(s.report_status)),
          el("td", null, el("a", { href: s.url, cls: "open-study", text: t("open") })));
      });
      root.appendChild(el("table", { cls: "list", id: "results" }, el("thead", null, head), el("tbody", null, rows)));
      if (data.truncated) root.appendChild(el("p", { cls: "note", text: t("search.truncated") }));
    };
    rerender();
  }

  // -- the study page --------------------------------------------------------------------------
  const PRESETS = {
    CT: [["default", null], ["lung", [-600, 1500]], ["mediastinum", [40, 400]], ["bone", [400, 1800]], ["brain", [40, 80]]],
    MR: [["default", null], ["t1", [500, 1000]], ["t2", [800, 1600]]],
    OTHER: [["default", null]],
  };
  const ZOOMS = [0.5, 0.75, 1, 1.5, 2, 3, 4, 6, 8];

  function studyPage(data) {
    const root = document.getElementById("study-root");
    const study = data.study;
    const series = data.series || [];
    const view = {
      series: 0, slice: 0, preset: "default", custom: null, zoom: 1, panX: 0, panY: 0,
    };
    // what is on screen: the slice index and rendition shown may lag behind view.slice while it loads
    const shown = { key: null, index: -1, kind: null };
    let prefetch = true;
    try { prefetch = window.localStorage.getItem("cami.viewer.prefetch") !== "0"; } catch (e) { /* storage disabled */ }
    const loader = new window.CamiFrames.Loader({ prefetch: prefetch, onChange: function () { display(); } });
    try { view.full = window.localStorage.getItem("cami.viewer.full") === "1"; } catch (e) { view.full = false; }
    loader.setFull(view.full);

    function slices(s) {
      const out = [];
      (s ? s.instances : []).forEach(function (inst) {
        const frames = inst.frames || 1;
        for (let f = 1; f <= frames; f++) out.push({ inst: inst, frame: frames > 1 ? f : null, frames: frames });
      });
      return out;
    }

    function presetsFor(s) {
      const m = s && s.modality;
      return PRESETS[m === "CT" || m === "MR" ? m : "OTHER"];
    }

    function windowParam() {
      if (view.preset === "custom" && view.custom) return view.custom;
      const found = presetsFor(series[view.series]).find(function (p) { return p[0] === view.preset; });
      return found ? found[1] : null;
    }

    // frame `slice` of series `s` as a preview (JPEG at the size drawn, for the link) or in full
    // quality (lossless PNG at full resolution); `v` names the instance's content, so the browser
    // may keep the picture for the session
    function frameUrl(s, slice, kind) {
      let url = "/dicomweb/studies/" + encodeURIComponent(study.study_uid) + "/series/" + encodeURIComponent(s.series_uid)
        + "/instances/" + encodeURIComponent(slice.inst.sop_uid);
      url += slice.frame ? "/frames/" + slice.frame + "/rendered" : "/rendered";
      const params = [];
      const w = windowParam();
      if (w) params.push("window=" + encodeURIComponent(w[0] + "," + w[1] + ",linear"));
      let accept = "image/png";
      if (kind === "preview") {
        const box = viewport.getBoundingClientRect();
        const cols = slice.inst.columns || 512, rows = slice.inst.rows || 512;
        const fit = Math.min((box.width || 512) / cols, (box.height || 512) / rows);
        const drawn = Math.ceil(Math.max(cols, rows) * fit * view.zoom * (window.devicePixelRatio || 1));
        const size = loader.preview(cols, rows, drawn);
        params.push("viewport=" + size.width + "," + size.height, "quality=" + size.quality);
        accept = "image/jpeg";
      }
      if (slice.inst.v) params.push("v=" + slice.inst.v);
      return { url: params.length ? url + "?" + params.join("&") : url, accept: accept };
    }

    function windowKey() {
      const w = windowParam();
      return w ? w[0] + "," + w[1] : "default";
    }

    // tell the loader which frames are wanted: this series, in this window
    function sequence() {
      const s = series[view.series];
      const all = slices(s);
      loader.setSequence(s ? s.series_uid + "|" + windowKey() : "none", all.length, function (index, kind) {
        return frameUrl(s, all[index], kind);
      }, s ? s.series_uid : null);
      loader.setTarget(view.slice);
    }

    // -- left panel
    function left() {
      const p = data.patient;
      const missing = study.missing || [];
      const patientCard = el("section", { cls: "card", id: "patient-card" },
        el("h2", { text: t("patient") }),
        el("div", { cls: "patient-name", id: "patient-name", text: p.name || "—" }),
        dl([[t("patient.id"), p.id], [t("patient.birth"), fmtDate(p.birth_date)], [t("patient.sex"), fmtSex(p.sex)],
          [t("patient.merged"), p.requested_id !== p.id ? p.requested_id : null]]));
      const studyCard = el("section", { cls: "card", id: "study-card" },
        el("h2", null, t("study"), study.emergency ? el("span", { cls: "badge emergency", text: " " + t("emergency") }) : null),
        dl([[t("study.date"), fmtDate(study.study_date) + " " + fmtTime(study.study_time)],
          [t("study.description"), study.study_description],
          [t("study.modalities"), (study.modalities || []).join(", ")],
          [t("study.orgs"), (study.organisations || []).length ? orgs(study) : null],
          [t("study.accession"), study.accession_number],
          [t("study.referring"), study.referring_physician],
          [t("study.counts"), String(study.series_count) + " / " + String(study.instance_count)],
          [t("study.complete"), missing.length
            ? el("span", { cls: "missing", id: "study-missing", text: t("study.missing") + ": " + missing.join(", ") })
            : t("study.complete.ok")],
          [t("study.uid"), el("small", { text: study.study_uid })]]));
      const list = el("ul", { cls: "series", id: "series-list" }, series.map(function (s, i) {
        const frames = s.instances.reduce(function (n, x) { return n + (x.frames || 1); }, 0);
        return el("li", {
          cls: i === view.series ? "current" : "", "data-series": s.series_uid,
          onclick: function () { selectSeries(i); },
        },
        el("div", { text: (s.number !== null && s.number !== undefined ? "#" + s.number + " " : "") + (s.modality || "") + " " + (s.description || "") }),
        el("div", { cls: "sub", text: s.instances.length + " " + t("series.images")
          + (frames > s.instances.length ? ", " + frames + " " + t("series.frames") : "") + (s.body_part ? " · " + s.body_part : "") }));
      }));
      const priors = data.priors || [];
      const priorList = priors.length
        ? el("ul", { cls: "priors", id: "priors" }, priors.map(function (s) {
          const newer = String(s.study_date || "") > String(study.study_date || "");
          return el("li", { "data-study": s.study_uid },
            el("div", null, el("a", { href: s.url, target: "_blank", rel: "noopener", title: t("priors.compare"),
              text: fmtDate(s.study_date) + " · " + (s.modalities || []).join(", ") }), newer ? " (" + t("priors.newer") + ")" : ""),
            el("div", { cls: "sub" }, (s.study_description || "") + " ", badge(s.report_status)),
            el("div", { cls: "sub" }, orgs(s)));
        }))
        : el("p", { cls: "hint", text: t("priors.none") });
      const order = data.order;
      const orderCard = order ? el("section", { cls: "card order", id: "order", "data-accession": order.accession_number },
        el("h2", { text: t("order") + " " + order.accession_number }),
        el("div", { cls: "order-status " + order.status, id: "order-status", "data-status": order.status, text: t("order." + order.status) }),
        el("ol", { cls: "order-stages" }, order.stages.map(function (s) {
          const count = s.stage === "images" && s.at ? " (" + s.detail.instances + ")" : "";
          return el("li", { cls: s.at ? "reached" : "pending", "data-stage": s.stage },
            t("order." + s.stage) + count + (s.at ? " · " + fmtDateTime(s.at) : ""));
        }))) : null;
      return el("aside", { cls: "panel info" }, patientCard, studyCard, orderCard,
        el("section", { cls: "card" }, el("h2", { text: t("series") }), list),
        el("section", { cls: "card" }, el("h2", { text: t("priors") }), priorList));
    }

    // -- report panel
    function reportPanel() {
      const r = data.report || { status: "none", reports: [] };
      const panel = el("aside", { cls: "panel report", id: "report" },
        el("h2", { text: t("report") }),
        el("div", { cls: "report-status " + r.status, id: "report-status", "data-status": r.status, text: t("report." + r.status) }));
      const reports = r.reports || [];
      const blocks = el("div", { cls: reports.length > 1 ? "report-blocks side-by-side" : "report-blocks" });
      panel.appendChild(blocks);
      reports.forEach(function (rep) {
        const block = el("section", { cls: "report-block " + rep.status, "data-report": rep.report_id,
          "data-reading": rep.reading || "primary" });
        blocks.appendChild(block);
        if (rep.reading && rep.reading !== "primary") block.appendChild(el("div", { cls: "reading-kind", text: t("reading." + rep.reading) }));
        if (rep.blinded) {
          block.appendChild(el("p", { cls: "hint blinded", text: t("reading.blinded") }));
          return;
        }
        if (rep.status === "draft") {
          block.appendChild(el("h3", { text: t("report.draft-mark") }));
          if (rep.protocol_text === null && rep.conclusion_text === null) {
            block.appendChild(el("p", { cls: "hint", text: t("report.draft-hidden") }));
            return;
          }
        }
        block.appendChild(el("h3", { text: t("report.protocol") }));
        block.appendChild(el("div", { cls: "report-text protocol", text: rep.protocol_text || "" }));
        block.appendChild(el("h3", { text: t("report.conclusion") }));
        block.appendChild(el("div", { cls: "report-text conclusion", text: rep.conclusion_text || "" }));
        if (rep.assessment) block.appendChild(el("div", { cls: "assessment", text: t("reading.assessment") + ": " + rep.assessment }));
        if (rep.signer) {
          block.appendChild(el("div", { cls: "signature", text: t("report.signed-by") + ": " + person(rep.signer) + ", " + fmtDateTime(rep.signed_at) }));
        } else if (rep.author) {
          block.appendChild(el("div", { cls: "signature", text: t("report.author") + ": " + person(rep.author) }));
        }
        (rep.amendments || []).forEach(function (a) {
          block.appendChild(el("details", { cls: "amendment" },
            el("summary", { text: t("report.amendment") + " " + a.number + ": " + person(a.amended_by) + ", " + fmtDateTime(a.amended_at) }),
            el("p", { text: t("report.reason") + ": " + (a.reason || "") }),
            el("p", null, el("b", { text: t("report.before") + ". " + t("report.protocol") + ": " }), a.protocol_before || ""),
            el("p", null, el("b", { text: t("report.conclusion") + ": " }), a.conclusion_before || "")));
        });
      });
      return panel;
    }

    // -- the viewer
    const img = el("img", { id: "image", alt: "", draggable: "false" });
    const stateBox = el("div", { cls: "state", id: "viewer-state" });
    const overlayTL = el("div", { cls: "overlay tl" });
    const overlayTR = el("div", { cls: "overlay tr" });
    const overlayBL = el("div", { cls: "overlay bl" });
    const overlayBR = el("div", { cls: "overlay br" });
    const viewport = el("div", { cls: "viewport", id: "viewport", tabindex: "0" }, img, stateBox, overlayTL, overlayTR, overlayBL, overlayBR);
    // when the first picture was drawn, in ms after navigation (the viewer's own measure, read by bench/viewer.py)
    img.addEventListener("load", function () {
      if (!document.body.hasAttribute("data-first-image-ms")) {
        document.body.setAttribute("data-first-image-ms", String(Math.round(performance.now())));
      }
    });
    // what the loader is doing, for tests and benches: requests in flight, renditions loaded, bytes
    window.camiViewer = {
      state: function () {
        const all = slices(series[view.series]);
        let previews = 0, full = 0;
        for (let i = 0; i < all.length; i++) {
          if (loader.entries.has(loader.key(i, "full"))) full++;
          else if (loader.entries.has(loader.key(i, "preview"))) previews++;
        }
        return {
          slices: all.length, pending: loader.inflight.size, previews: previews, full: full,
          bytes: loader.totals.bytes, requests: loader.totals.requests, index: shown.index, target: view.slice,
          quality: shown.kind, rate: loader.rate(),
        };
      },
    };
    const slider = el("input", { type: "range", id: "slice-slider", min: "0", max: "0", value: "0", step: "1" });
    const sliceInfo = el("span", { id: "slice-info" });

    function viewer() {
      const s = series[view.series];
      const presetButtons = presetsFor(s).map(function (p) {
        return el("button", {
          type: "button", cls: view.preset === p[0] ? "active" : "", "data-preset": p[0], text: t("viewer." + p[0]),
          title: p[1] ? t("viewer.center") + " " + p[1][0] + " / " + t("viewer.width") + " " + p[1][1] : "",
          onclick: function () { view.preset = p[0]; render(); },
        });
      });
      const c = el("input", { type: "number", id: "win-center", value: view.custom ? view.custom[0] : "", title: t("viewer.center"), placeholder: t("viewer.center") });
      const w = el("input", { type: "number", id: "win-width", min: "1", value: view.custom ? view.custom[1] : "", title: t("viewer.width"), placeholder: t("viewer.width") });
      const apply = el("button", {
        type: "button", cls: view.preset === "custom" ? "active" : "", text: t("viewer.custom"),
        onclick: function () {
          const cv = Number(c.value), wv = Number(w.value);
          if (c.value === "" || w.value === "" || !isFinite(cv) || !isFinite(wv) || wv < 1) return;
          view.custom = [cv, wv]; view.preset = "custom"; render();
        },
      });
      const toolbar = el("div", { cls: "toolbar", id: "toolbar" },
        el("span", { cls: "group", id: "presets" }, el("span", { text: t("viewer.window") + ":" }), presetButtons, c, w, apply),
        el("span", { cls: "group" }, el("span", { text: t("viewer.zoom") + ":" }),
          el("button", { type: "button", id: "zoom-out", text: "−", onclick: function () { zoomBy(-1); } }),
          el("button", { type: "button", id: "zoom-in", text: "+", onclick: function () { zoomBy(1); } }),
          el("button", { type: "button", id: "zoom-fit", text: t("viewer.fit"), onclick: function () { view.zoom = 1; view.panX = view.panY = 0; transform(); } })),
        el("span", { cls: "group" },
          el("button", {
            type: "button", id: "full-quality", cls: view.full ? "active" : "", "aria-pressed": view.full ? "true" : "false",
            title: t("viewer.full-hint"), text: t("viewer.full"),
            onclick: function () {
              view.full = !view.full;
              try { window.localStorage.setItem("cami.viewer.full", view.full ? "1" : "0"); } catch (e) { /* ignore */ }
              this.classList.toggle("active", view.full);
              this.setAttribute("aria-pressed", view.full ? "true" : "false");
              loader.setFull(view.full);
              display();
            },
          })));
      const bar = el("div", { cls: "scrollbar" },
        el("button", { type: "button", id: "prev", text: "▲", onclick: function () { step(-1); } }),
        slider,
        el("button", { type: "button", id: "next", text: "▼", onclick: function () { step(1); } }),
        sliceInfo);
      return el("section", { cls: "viewer" }, toolbar, viewport, bar,
        el("div", { cls: "scrollbar hint", text: t("viewer.help") }));
    }

    function transform() {
      img.style.transform = "translate(" + view.panX + "px," + view.panY + "px) scale(" + view.zoom + ")";
      img.classList.toggle("pixelated", view.zoom >= 2);
      overlays();
    }

    function zoomBy(direction) {
      let i = ZOOMS.findIndex(function (z) { return z >= view.zoom - 1e-9; });
      if (i < 0) i = ZOOMS.length - 1;
      i = Math.max(0, Math.min(ZOOMS.length - 1, i + direction));
      view.zoom = ZOOMS[i];
      if (view.zoom <= 1) view.panX = view.panY = 0;
      transform();
    }

    function overlays() {
      const s = series[view.series];
      const all = slices(s);
      const at = shown.index >= 0 ? shown.index : view.slice;
      const cur = all[at];
      const p = data.patient;
      overlayTL.textContent = (p.name || "") + "\n" + p.id;
      overlayTL.style.whiteSpace = "pre";
      overlayTR.style.whiteSpace = "pre";
      overlayTR.textContent = fmtDate(study.study_date) + "\n" + (s ? ((s.modality || "") + " " + (s.description || "")) : "");
      const w = windowParam();
      overlayBR.textContent = (w ? t("viewer.center") + " " + w[0] + " " + t("viewer.width") + " " + w[1] : t("viewer.default"))
        + " · " + Math.round(view.zoom * 100) + "%" + (shown.kind ? " · " + t("viewer.kind." + shown.kind) : "");
      if (!cur) { overlayBL.textContent = ""; sliceInfo.textContent = ""; return; }
      // the counter names the slice on screen; while another one loads, it says which
      const waiting = at !== view.slice;
      const text = t("viewer.image") + " " + (at + 1) + " / " + all.length
        + (cur.inst.number !== null && cur.inst.number !== undefined ? " · " + t("viewer.number") + " " + cur.inst.number : "")
        + (cur.frame ? " · " + t("viewer.frame") + " " + cur.frame + " / " + cur.frames : "")
        + (waiting ? " · " + t("viewer.loading-slice") + " " + (view.slice + 1) + "…" : "");
      overlayBL.textContent = text;
      sliceInfo.textContent = text;
      sliceInfo.classList.toggle("loading", waiting);
      sliceInfo.setAttribute("data-instance-number", cur.inst.number === null || cur.inst.number === undefined ? "" : String(cur.inst.number));
      sliceInfo.setAttribute("data-sop", cur.inst.sop_uid);
      sliceInfo.setAttribute("data-frame", cur.frame ? String(cur.frame) : "");
      sliceInfo.setAttribute("data-index", String(at));
      sliceInfo.setAttribute("data-target", String(view.slice));
      sliceInfo.setAttribute("data-quality", shown.kind || "");
    }

    // put the best loaded picture of the wanted slice on screen, else the nearest loaded slice
    // (the counter follows the picture and marks the slice still loading)
    function display() {
      const s = series[view.series];
      const all = slices(s);
      if (!all.length) {
        img.removeAttribute("src");
        shown.index = -1; shown.kind = null;
        stateBox.textContent = t("viewer.no-images");
        overlays();
        return;
      }
      const key = s.series_uid + "|" + windowKey();
      let entry = loader.best(view.slice);
      let index = view.slice;
      if (!entry) {
        const near = loader.nearest(view.slice);
        if (near >= 0) { index = near; entry = loader.best(near) || loader.entries.get(loader.key(near, "preview")); }
      }
      if (entry) {
        if (img.getAttribute("src") !== entry.blobUrl) img.src = entry.blobUrl;
        loader.pin(entry.blobUrl);
        img.setAttribute("data-url", entry.url);
        img.setAttribute("data-quality", entry.kind);
        shown.key = key; shown.index = index; shown.kind = entry.kind;
      } else if (shown.key !== null && shown.key.split("|")[0] !== s.series_uid) {
        img.removeAttribute("src");  // another series' picture would not match the counter
        shown.key = null; shown.index = -1; shown.kind = null;
      }
      const failure = loader.error(view.slice);
      if (failure && index !== view.slice || failure && !entry) {
        const known = { 401: 1, 403: 1, 404: 1, 406: 1 };
        stateBox.textContent = known[failure] ? t("viewer.err." + failure)
          : t("viewer.err.other") + (failure === "network" ? "" : " (HTTP " + failure + ")");
      } else {
        stateBox.textContent = entry && index === view.slice ? "" : t("viewer.loading");
      }
      viewport.classList.toggle("loading", !entry || index !== view.slice);
      overlays();
    }

    function go(index) {
      const all = slices(series[view.series]);
      if (!all.length) return;
      const next = Math.max(0, Math.min(all.length - 1, index));
      if (next === view.slice) return;
      view.slice = next;
      slider.value = String(next);
      loader.setTarget(next);
      display();
    }

    function step(delta) { go(view.slice + delta); }

    function selectSeries(i) {
      view.series = i;
      view.slice = 0;
      const names = presetsFor(series[i]).map(function (p) { return p[0]; });
      if (view.preset !== "custom" && names.indexOf(view.preset) < 0) view.preset = "default";
      render();
    }

    // input: wheel and keys scroll, ctrl+wheel and +/- zoom, drag pans
    viewport.addEventListener("wheel", function (e) {
      e.preventDefault();
      if (e.ctrlKey) zoomBy(e.deltaY < 0 ? 1 : -1);
      else step(e.deltaY > 0 ? 1 : -1);
    }, { passive: false });
    document.addEventListener("keydown", function (e) {
      const tag = (e.target && e.target.tagName) || "";
      if (tag === "INPUT" && e.target.type !== "range") return;
      const keys = {
        ArrowDown: function () { step(1); }, ArrowRight: function () { step(1); },
        ArrowUp: function () { step(-1); }, ArrowLeft: function () { step(-1); },
        PageDown: function () { step(10); }, PageUp: function () { step(-10); },
        Home: function () { go(0); }, End: function () { go(1e9); },
        "+": function () { zoomBy(1); }, "=": function () { zoomBy(1); }, "-": function () { zoomBy(-1); },
        "0": function () { view.zoom = 1; view.panX = view.panY = 0; transform(); },
      };
      const action = keys[e.key];
      if (action) { e.preventDefault(); action(); }
    });
    slider.addEventListener("input", function () { go(Number(slider.value)); });
    let drag = null;
    viewport.addEventListener("mousedown", function (e) {
      if (e.button !== 0) return;
      drag = { x: e.clientX, y: e.clientY, panX: view.panX, panY: view.panY };
      viewport.classList.add("dragging");
      viewport.focus();
    });
    window.addEventListener("mousemove", function (e) {
      if (!drag) return;
      view.panX = drag.panX + e.clientX - drag.x;
      view.panY = drag.panY + e.clientY - drag.y;
      transform();
    });
    window.addEventListener("mouseup", function () { drag = null; viewport.classList.remove("dragging"); });
    viewport.addEventListener("dblclick", function () { view.zoom = 1; view.panX = view.panY = 0; transform(); });

    function render() {
      root.textContent = "";
      root.appendChild(left());
      root.appendChild(viewer());
      root.appendChild(reportPanel());
      const all = slices(series[view.series]);
      slider.max = String(Math.max(0, all.length - 1));
      slider.value = String(view.slice);
      slider.disabled = all.length < 2;
      transform();
      sequence();
      display();
    }
    rerender = render;
    render();
  }

  // -- start -------------------------------------------------------------------------------------
  function start() {
    // the viewer reads Resource Timing (what came from the cache); a series is hundreds of entries
    if (performance.setResourceTimingBufferSize) performance.setResourceTimingBufferSize(10000);
    const node = document.getElementById("cami-data");
    const data = node ? JSON.parse(node.textContent) : { page: "message" };
    const toggle = document.getElementById("lang-toggle");
    if (toggle) toggle.addEventListener("click", function () { setLang(lang === "ru" ? "en" : "ru"); });
    applyLang();
    if (data.page === "signin") signinPage(data);
    else if (data.page === "search") searchPage(data);
    else if (data.page === "study") studyPage(data);
    document.body.setAttribute("data-ready", "1");
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
