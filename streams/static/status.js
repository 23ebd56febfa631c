// Every value from the API goes into the page as text (textContent), never as HTML: ids,
// reasons and evidence come from events anyone may send.
const ACTIONS=['allow','scale','hold','block'];
let last=null;
function money(c){return (Number(c)/100).toLocaleString(undefined,{minimumFractionDigits:2})}
function cell(tag,text,cls){const e=document.createElement(tag);e.textContent=String(text);if(cls)e.className=cls;return e}
function row(cells){const tr=document.createElement('tr');tr.append(...cells);return tr}
function fill(id,header,rows){
  document.getElementById(id).replaceChildren(row(header.map(h=>cell('th',h))),...rows)}
async function api(path){
  const r=await fetch(path,{credentials:'same-origin'});
  if(r.status===401){location.assign('/login');throw new Error('logged out')}
  return r.json()}
async function tick(){
  const s=await api('/api/stats');const c=s.counters;
  const now=Date.now();
  if(last){const rate=((c.decisions||0)-last.n)/((now-last.t)/1000);
    document.getElementById('rate').textContent=rate>=0?`${rate.toFixed(0)} decisions/s`:'';}
  last={t:now,n:c.decisions||0};
  const counts=[['decisions',c.decisions||0],['allow',c['action:allow']||0],['scale',c['action:scale']||0],
    ['hold',c['action:hold']||0],['block',c['action:block']||0],['dead letters',c.dead_letters||0],
    ['rebate requested',money(c.rebate_requested_cents||0)],['rebate granted',money(c.rebate_granted_cents||0)]];
  document.getElementById('counts').replaceChildren(...counts.map(([k,v])=>row([cell('th',k),cell('td',v)])));
  fill('recent',['tx','user','merchant','action','weight','granted','reasons'],s.recent.map(d=>row([
    cell('th',d.tx_id),cell('td',d.user_id,'text'),cell('td',d.merchant_id,'text'),
    cell('td',d.action,ACTIONS.includes(d.action)?d.action:''),cell('td',Number(d.trust_weight).toFixed(3)),
    cell('td',`${money(d.rebate_granted_cents)}/${money(d.rebate_requested_cents)}`),
    cell('td',d.reasons.join(', '),'text')])));
}
async function rings(){
  const s=await api('/api/rings?limit=20');
  document.getElementById('ringcount').textContent=`${s.count} ring(s) flagged; newest first`;
  fill('rings',['ring','kind','score','users','merchants','rebate at risk','evidence'],s.rings.map(g=>row([
    cell('th',`${g.ring_id} v${g.version}`),cell('td',g.kind,'text'),cell('td',Number(g.score).toFixed(2)),
    cell('td',g.users.length),cell('td',g.merchants.length),cell('td',money(g.rebate_at_risk_cents)),
    cell('td',Object.entries(g.evidence).filter(([k,v])=>typeof v!=='object').map(([k,v])=>k+'='+v).join(', '),'text')])));
}
tick();setInterval(tick,1000);rings();setInterval(rings,3000);
